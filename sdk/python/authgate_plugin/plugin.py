"""``Plugin``: the base class a provider plugin subclasses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import Unsupported
from .model import Capabilities, Facts, Token

if TYPE_CHECKING:
    from .context import Context, HostClient


class Plugin:
    """A provider plugin. Subclass it, set the class attributes, override the handlers and
    pass an instance to ``serve``.

    Handlers run on a thread pool, several at a time: keep per-call state in locals, not on
    ``self``. ``settings`` is the credential's settings object, parsed from JSON, secrets
    included. A handler signals failure by raising one of ``InvalidSettings``, ``Rejected``,
    ``Transient``, ``TimedOut`` or ``Unsupported``; any other exception is reported as
    ``Transient`` naming only the exception's type (its arguments may hold secrets).
    """

    #: The provider kind credentials name (``provider = "<kind>"``). Required.
    kind: ClassVar[str] = ""
    #: The plugin's own version, for logs.
    version: ClassVar[str] = "0.0.0"
    #: Settings fields holding secrets, at any depth of the settings object.
    secret_fields: ClassVar[Sequence[str]] = ()
    #: What the plugin can do beyond Fetch.
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: A JSON Schema (draft 2020-12) of the settings object, or ``None``.
    settings_schema: ClassVar[Mapping[str, Any] | None] = None

    _host: HostClient | None = None

    def validate(self, settings: dict[str, Any]) -> Facts:
        """Checks one credential's settings; raise ``InvalidSettings("field: what to fix")``.

        Runs without a ``Context``: it must not reach the network.
        """
        return Facts()

    def fetch(
        self,
        ctx: Context,
        settings: dict[str, Any],
        scopes: list[str],
        refresh_token: str | None,
    ) -> Token:
        """Obtains a token: with ``refresh_token`` when there is one, else the primary grant.

        ``scopes`` empty means the credential's default scopes.
        """
        raise Unsupported("Fetch is not implemented by this plugin")

    def revoke(self, ctx: Context, settings: dict[str, Any], token: str, hint: str) -> None:
        """Revokes ``token`` upstream. ``hint``: ``"access_token"``, ``"refresh_token"`` or
        ``""`` when the gateway gave none. Needs ``capabilities.revoke``."""
        raise Unsupported("Revoke is not supported by this plugin")

    def authorization_url(
        self,
        ctx: Context,
        settings: dict[str, Any],
        scopes: list[str],
        state: str,
        code_challenge: str,
        redirect_uri: str,
    ) -> str:
        """The consent page URL (authorization-code flow). ``code_challenge`` is the PKCE
        S256 challenge, empty without PKCE."""
        raise Unsupported("the authorization-code flow is not supported by this plugin")

    def exchange_code(
        self,
        ctx: Context,
        settings: dict[str, Any],
        code: str,
        code_verifier: str,
        redirect_uri: str,
    ) -> Token:
        """Exchanges an authorization code (called once; never retried automatically)."""
        raise Unsupported("the authorization-code flow is not supported by this plugin")

    def log(self, level: str, message: str) -> None:
        """Logs a line not tied to a call (e.g. from ``validate``) through ``Host.Log``.

        Inside a call prefer ``ctx.log``, which the gateway also scrubs of that
        credential's secrets. Does nothing before ``serve`` starts.
        """
        if self._host is not None:
            self._host.log("", level, message)
