"""Plain data types a plugin returns or receives: Capabilities, Facts, Token, Response."""

from __future__ import annotations

import email.utils
import json as _json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._proto import plugin_pb2 as pb


@dataclass(frozen=True)
class Capabilities:
    """What the plugin can do beyond ``Fetch`` (``authgate.plugin.v1.Capabilities``)."""

    revoke: bool = False
    authorization_code: bool = False
    pkce: bool = False
    refresh_token: bool = False

    def to_proto(self) -> pb.Capabilities:
        return pb.Capabilities(
            revoke=self.revoke,
            authorization_code=self.authorization_code,
            pkce=self.pkce,
            refresh_token=self.refresh_token,
        )


@dataclass
class Facts:
    """What the gateway needs to know about valid settings (``ValidateResponse``).

    ``default_scopes``: scopes to request when the caller names none.
    ``requires_refresh_token``: no token can be had without a refresh token.
    ``configured_refresh_token``: a refresh token given in the settings.
    ``refresh_token_idle_lifetime_seconds``: how long an unused refresh token stays valid
    (0: unknown).
    """

    default_scopes: list[str] = field(default_factory=list)
    requires_refresh_token: bool = False
    configured_refresh_token: str = ""
    refresh_token_idle_lifetime_seconds: int = 0

    def to_proto(self) -> pb.ValidateResponse:
        return pb.ValidateResponse(
            default_scopes=list(self.default_scopes),
            requires_refresh_token=self.requires_refresh_token,
            configured_refresh_token=self.configured_refresh_token,
            refresh_token_idle_lifetime_seconds=self.refresh_token_idle_lifetime_seconds,
        )


@dataclass
class Token:
    """An access token (``authgate.plugin.v1.Token``).

    ``expires_in``: lifetime from receipt in seconds (0: unknown or only ``expires_at``
    known). ``expires_at``: absolute expiry, seconds since the epoch (0: unknown).
    ``granted_scopes``: the scopes the provider said it granted (empty: it did not say).
    ``refresh_token``: a new (first or rotated) refresh token; empty keeps the current one.
    ``metadata``: non-secret facts the caller needs (e.g. a regional base URL).
    """

    access_token: str
    token_type: str = "Bearer"
    expires_in: int = 0
    expires_at: int = 0
    granted_scopes: list[str] = field(default_factory=list)
    refresh_token: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def to_proto(self) -> pb.Token:
        return pb.Token(
            access_token=self.access_token,
            token_type=self.token_type,
            expires_in_seconds=max(0, int(self.expires_in)),
            expires_at_unix=max(0, int(self.expires_at)),
            granted_scopes=list(self.granted_scopes),
            refresh_token=self.refresh_token,
            metadata=dict(self.metadata),
        )


@dataclass(frozen=True)
class Response:
    """The provider's HTTP answer to a ``Context.send`` (any status)."""

    status: int
    #: Header (name, value) pairs in the order received; names as the gateway gave them.
    headers: Sequence[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        return _json.loads(self.body)

    def json_object(self) -> dict[str, Any] | None:
        """The body as a JSON object, or ``None`` when it is not one."""
        try:
            value = self.json()
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def retry_after(self) -> float | None:
        """``Retry-After`` in seconds (delta-seconds or HTTP-date), or ``None``."""
        value = self.header("retry-after")
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())

    @classmethod
    def from_proto(cls, response: pb.HttpResponse) -> Response:
        return cls(
            status=response.status,
            headers=tuple((h.name, h.value) for h in response.headers),
            body=bytes(response.body),
        )
