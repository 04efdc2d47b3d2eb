"""authgate_plugin: write an authgate provider plugin in Python.

A plugin is a program the gateway starts; it serves the ``authgate.plugin.v1.Provider``
gRPC service on a Unix socket and reaches the provider only through the gateway's
``Host.Send`` (see docs/plugins.md in the authgate repository). This SDK does the handshake,
the secret check and the protocol mapping; a plugin is a subclass of ``Plugin``::

    from authgate_plugin import Capabilities, Context, Facts, InvalidSettings, Plugin, Token
    from authgate_plugin import parse_oauth_token, serve

    class MyPlugin(Plugin):
        kind = "my_provider"
        version = "1.0.0"
        secret_fields = ["client_secret"]
        capabilities = Capabilities(refresh_token=True)
        settings_schema = {"type": "object", "required": ["token_url"]}

        def validate(self, settings: dict) -> Facts:
            if not isinstance(settings.get("token_url"), str):
                raise InvalidSettings("token_url: required, an https URL")
            return Facts(default_scopes=["read"])

        def fetch(self, ctx: Context, settings: dict, scopes: list[str],
                  refresh_token: str | None) -> Token:
            response = ctx.send("token", "POST", settings["token_url"],
                                form={"grant_type": "client_credentials"})
            return parse_oauth_token("token", response)

    if __name__ == "__main__":
        serve(MyPlugin())

Public API:

* ``Plugin``: base class. Class attributes ``kind``, ``version``, ``secret_fields``,
  ``capabilities``, ``settings_schema``; handlers ``validate``, ``fetch``, ``revoke``,
  ``authorization_url``, ``exchange_code`` (the last three raise ``Unsupported`` unless
  overridden); ``log`` for lines not tied to a call.
* ``Context``: one in-flight call. ``ctx.send(step, method, url, *, headers, form, json,
  secrets, secret_response_fields) -> Response`` is the only way to reach the network;
  ``ctx.log(level, message)`` logs through the gateway.
* ``Capabilities``, ``Facts``, ``Token``, ``Response``: data types.
* ``InvalidSettings``, ``Rejected`` (with ``RejectKind``), ``Transient``, ``TimedOut``,
  ``Unsupported``: classified failures, all subclasses of ``PluginError``. Any other
  exception from a handler becomes ``Transient`` naming only the exception type.
* ``raise_for_oauth_error(step, response)``, ``parse_oauth_token(step, response)``:
  RFC 6749 helpers.
* ``serve(plugin)``: runs the plugin; returns only by exiting the process.
"""

from .context import Context
from .errors import (
    InvalidSettings,
    PluginError,
    Rejected,
    RejectKind,
    TimedOut,
    Transient,
    Unsupported,
)
from .model import Capabilities, Facts, Response, Token
from .oauth import parse_oauth_token, raise_for_oauth_error
from .plugin import Plugin
from .server import serve

__version__ = "1.0.0"

__all__ = [
    "Capabilities",
    "Context",
    "Facts",
    "InvalidSettings",
    "Plugin",
    "PluginError",
    "Rejected",
    "RejectKind",
    "Response",
    "TimedOut",
    "Token",
    "Transient",
    "Unsupported",
    "parse_oauth_token",
    "raise_for_oauth_error",
    "serve",
]
