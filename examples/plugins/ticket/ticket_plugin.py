#!/usr/bin/env python3
"""Example authgate plugin: a provider with a custom two-step ticket flow.

Provider kind ``example_ticket``. Settings::

    base_url        required; http(s) URL of the provider (one trailing slash is ignored)
    api_key         required; non-empty string
    api_secret      required; non-empty string (secret)
    default_scopes  optional; list of strings, requested when the caller names none

Flow, every request through the gateway (``ctx.send``):

* Fetch without a refresh token:
    1. step ``session``: ``POST {base_url}/session`` with JSON
       ``{"api_key": ..., "api_secret": ...}`` answers ``{"ticket": ..., "expires_in": 60}``.
    2. step ``token``: ``POST {base_url}/token`` with the form ``grant_type=ticket``,
       ``ticket=<ticket>``, ``scope=<scopes>`` answers an RFC 6749 token response.
* Fetch with a refresh token, step ``refresh``: ``POST {base_url}/token`` with the form
  ``grant_type=refresh_token``, ``refresh_token=<rt>``, ``scope=<scopes>`` and HTTP Basic
  ``api_key:api_secret``; answers a token response with a rotated refresh token.
* Revoke, step ``revoke``: ``POST {base_url}/revoke`` with the form ``token=<token>``,
  ``token_type_hint=<hint>`` and HTTP Basic.

``scope`` is sent only when there are scopes (the requested ones, else ``default_scopes``).
Any non-2xx answer is classified with ``raise_for_oauth_error``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import authgate_plugin
from authgate_plugin import (
    Capabilities,
    Context,
    Facts,
    InvalidSettings,
    Plugin,
    Token,
    Transient,
    parse_oauth_token,
    raise_for_oauth_error,
)

SETTINGS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "example_ticket settings",
    "type": "object",
    "additionalProperties": False,
    "required": ["base_url", "api_key", "api_secret"],
    "properties": {
        "base_url": {"type": "string", "format": "uri", "pattern": "^https?://"},
        "api_key": {"type": "string", "minLength": 1},
        "api_secret": {"type": "string", "minLength": 1},
        "default_scopes": {"type": "array", "items": {"type": "string"}},
    },
}


@dataclass(frozen=True)
class Settings:
    """One credential's checked settings."""

    base_url: str
    api_key: str
    api_secret: str
    default_scopes: list[str]

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Settings:
        """Checks ``raw``; raises ``InvalidSettings`` naming the first wrong field."""
        for name in raw:
            if name not in SETTINGS_SCHEMA["properties"]:
                raise InvalidSettings(f"{name}: unknown field")
        base_url = raw.get("base_url")
        if not isinstance(base_url, str) or not base_url:
            raise InvalidSettings("base_url: required, an http(s) URL")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidSettings("base_url: must be an http or https URL")
        base_url = base_url.removesuffix("/")
        if parts.query or parts.fragment:
            raise InvalidSettings("base_url: must have no query or fragment")
        for name in ("api_key", "api_secret"):
            value = raw.get(name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidSettings(f"{name}: required, a non-empty string")
        api_key = raw["api_key"]
        if ":" in api_key or any(ord(c) < 32 or ord(c) == 127 for c in api_key):
            raise InvalidSettings(
                "api_key: must not contain `:` or control characters: it is sent as the "
                "HTTP Basic user name"
            )
        scopes = raw.get("default_scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidSettings("default_scopes: must be a list of strings")
        if any(not s.strip() for s in scopes):
            raise InvalidSettings("default_scopes: must not contain empty entries")
        # As the gateway does with requested scopes: deduplicated and sorted.
        return cls(base_url, api_key, raw["api_secret"], sorted(set(scopes)))

    def basic_auth(self) -> str:
        """The ``authorization`` header value: Basic base64(api_key:api_secret)."""
        pair = f"{self.api_key}:{self.api_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def scope_field(self, scopes: list[str]) -> list[tuple[str, str]]:
        """The ``scope`` form field for ``scopes`` (else the defaults); none when empty."""
        chosen = scopes or self.default_scopes
        return [("scope", " ".join(chosen))] if chosen else []


class TicketPlugin(Plugin):
    """The ``example_ticket`` provider."""

    kind = "example_ticket"
    version = authgate_plugin.__version__
    secret_fields = ["api_secret"]
    capabilities = Capabilities(revoke=True, refresh_token=True)
    settings_schema = SETTINGS_SCHEMA

    def validate(self, settings: dict[str, Any]) -> Facts:
        return Facts(default_scopes=Settings.parse(settings).default_scopes)

    def fetch(
        self,
        ctx: Context,
        settings: dict[str, Any],
        scopes: list[str],
        refresh_token: str | None,
    ) -> Token:
        s = Settings.parse(settings)
        if refresh_token:
            return self._refresh(ctx, s, scopes, refresh_token)
        ticket = self._session(ctx, s)
        response = ctx.send(
            "token",
            "POST",
            f"{s.base_url}/token",
            form=[("grant_type", "ticket"), ("ticket", ticket), *s.scope_field(scopes)],
            secrets=[ticket],
        )
        return parse_oauth_token("token", response)

    def revoke(self, ctx: Context, settings: dict[str, Any], token: str, hint: str) -> None:
        s = Settings.parse(settings)
        form = [("token", token)]
        if hint:
            form.append(("token_type_hint", hint))
        basic = s.basic_auth()
        response = ctx.send(
            "revoke",
            "POST",
            f"{s.base_url}/revoke",
            headers=[("authorization", basic)],
            form=form,
            secrets=[token, basic],
        )
        raise_for_oauth_error("revoke", response)

    @staticmethod
    def _session(ctx: Context, s: Settings) -> str:
        """Step ``session``: trades the API key and secret for a short-lived ticket."""
        response = ctx.send(
            "session",
            "POST",
            f"{s.base_url}/session",
            json={"api_key": s.api_key, "api_secret": s.api_secret},
            secret_response_fields=["ticket"],
        )
        raise_for_oauth_error("session", response)
        body = response.json_object() or {}
        ticket = body.get("ticket")
        if not isinstance(ticket, str) or not ticket:
            raise Transient(f"HTTP {response.status}: session response has no ticket", step="session")
        return ticket

    @staticmethod
    def _refresh(ctx: Context, s: Settings, scopes: list[str], refresh_token: str) -> Token:
        """Step ``refresh``: the refresh-token grant, authenticated with HTTP Basic."""
        basic = s.basic_auth()
        response = ctx.send(
            "refresh",
            "POST",
            f"{s.base_url}/token",
            headers=[("authorization", basic)],
            form=[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                *s.scope_field(scopes),
            ],
            secrets=[refresh_token, basic],
        )
        return parse_oauth_token("refresh", response)


if __name__ == "__main__":
    authgate_plugin.serve(TicketPlugin())
