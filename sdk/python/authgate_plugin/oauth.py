"""Helpers for RFC 6749-style token endpoints: error classification and token parsing."""

from __future__ import annotations

from typing import Any

from .errors import Rejected, RejectKind, Transient
from .model import Response, Token

#: OAuth error codes that mean the credential itself is bad.
CREDENTIAL_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client"})


def _error_message(status: int, code: str, description: str) -> str:
    message = f"HTTP {status}"
    if code:
        message += f" {code}"
    if description:
        message += f": {description}"
    return message


def raise_for_oauth_error(step: str, response: Response) -> None:
    """Raises the classified error for a non-2xx answer; returns when it is 2xx.

    * 408, 429 and 5xx: ``Transient`` (``retry_after`` from ``Retry-After``); so is any
      other status outside 4xx (a redirect: the gateway follows none).
    * A JSON ``error`` of ``invalid_client``, ``invalid_grant`` or ``unauthorized_client``:
      ``Rejected(CREDENTIAL)``; ``invalid_scope``: ``Rejected(SCOPE)``; any other code:
      ``Rejected(REQUEST)``. The code goes in ``code``, ``error_description`` in the message.
    * Any other non-2xx (no JSON ``error``): ``Rejected(REQUEST, code="http_<status>")``.
    """
    if response.ok:
        return
    status = response.status
    body = response.json_object() or {}
    code = body.get("error") if isinstance(body.get("error"), str) else ""
    description = body.get("error_description")
    description = description if isinstance(description, str) else ""
    message = _error_message(status, code, description)
    if status in (408, 429) or not 400 <= status < 500:
        raise Transient(message, step=step, retry_after=response.retry_after())
    if not code:
        raise Rejected(RejectKind.REQUEST, message, code=f"http_{status}", step=step)
    if code in CREDENTIAL_ERRORS:
        raise Rejected(RejectKind.CREDENTIAL, message, code=code, step=step)
    if code == "invalid_scope":
        raise Rejected(RejectKind.SCOPE, message, code=code, step=step)
    raise Rejected(RejectKind.REQUEST, message, code=code, step=step)


def _seconds(value: Any) -> int:
    """A non-negative whole number of seconds from a JSON number or numeric string."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return max(0, int(value))
    if isinstance(value, str):
        try:
            return max(0, int(float(value.strip())))
        except ValueError:
            return 0
    return 0


def parse_oauth_token(step: str, response: Response) -> Token:
    """The ``Token`` in an RFC 6749 token response (section 5.1).

    A non-2xx answer is classified with ``raise_for_oauth_error``. A 2xx answer that is not
    a JSON object or has no string ``access_token`` is ``Transient``. Reads
    ``access_token``, ``token_type`` (default ``"Bearer"``), ``expires_in``,
    ``refresh_token`` and ``scope`` (space-separated).
    """
    raise_for_oauth_error(step, response)
    body = response.json_object()
    if body is None:
        raise Transient(f"HTTP {response.status}: token response is not a JSON object", step=step)
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise Transient(f"HTTP {response.status}: token response has no access_token", step=step)
    token_type = body.get("token_type")
    refresh_token = body.get("refresh_token")
    scope = body.get("scope")
    return Token(
        access_token=access_token,
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        expires_in=_seconds(body.get("expires_in")),
        granted_scopes=scope.split() if isinstance(scope, str) else [],
        refresh_token=refresh_token if isinstance(refresh_token, str) else "",
    )
