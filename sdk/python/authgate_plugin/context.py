"""``Context``: a plugin's only way to reach the network (``Host.Send``) and to log."""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

import grpc

from ._proto import plugin_pb2 as pb
from ._proto import plugin_pb2_grpc as pb_grpc
from .errors import Transient, from_proto
from .model import Response

SECRET_METADATA = "authgate-plugin-secret"

#: Headers or form fields: a mapping (insertion order kept) or a sequence of pairs.
Pairs = Union[Mapping[str, str], Sequence[tuple[str, str]]]

_LEVELS = {
    "debug": pb.LOG_LEVEL_DEBUG,
    "info": pb.LOG_LEVEL_INFO,
    "warn": pb.LOG_LEVEL_WARN,
    "warning": pb.LOG_LEVEL_WARN,
    "error": pb.LOG_LEVEL_ERROR,
}

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def _pairs(value: Pairs | None) -> list[tuple[str, str]]:
    if value is None:
        return []
    items: Iterable[tuple[str, str]] = value.items() if isinstance(value, Mapping) else value
    return [(str(name), str(val)) for name, val in items]


class HostClient:
    """The gateway's ``Host`` service, with the secret metadata on every call."""

    def __init__(self, channel: grpc.Channel, secret: str) -> None:
        self._stub = pb_grpc.HostStub(channel)
        self._metadata = ((SECRET_METADATA, secret),)

    def send(self, request: pb.SendRequest, timeout: float | None) -> pb.SendResponse:
        return self._stub.Send(request, metadata=self._metadata, timeout=timeout)

    def log(self, call_id: str, level: str, message: str) -> None:
        """Sends a log line; never raises (a lost log line must not fail an operation)."""
        request = pb.LogRequest(
            call_id=call_id,
            level=_LEVELS.get(level.lower(), pb.LOG_LEVEL_INFO),
            message=message,
        )
        try:
            self._stub.Log(request, metadata=self._metadata, timeout=5)
        except grpc.RpcError as err:
            # The line itself may hold secrets only the gateway can scrub: do not echo it.
            print(f"authgate-plugin: Host.Log failed ({err.code().name})", file=sys.stderr)


class Context:
    """One in-flight gateway call (Fetch, Revoke, AuthorizationUrl or ExchangeCode).

    ``call_id`` identifies the call; it is valid only until the handler returns, so do not
    keep a Context beyond that.
    """

    def __init__(
        self, host: HostClient, call_id: str, rpc_context: grpc.ServicerContext | None = None
    ) -> None:
        self._host = host
        self._rpc_context = rpc_context
        self.call_id = call_id
        #: The step of the last ``send`` (used to label errors that name no step).
        self.step = ""

    def send(
        self,
        step: str,
        method: str,
        url: str,
        *,
        headers: Pairs | None = None,
        form: Pairs | None = None,
        json: Any = None,
        secrets: Iterable[str] = (),
        secret_response_fields: Iterable[str] = (),
    ) -> Response:
        """Sends one HTTP request through the gateway and returns the answer (any status).

        ``step`` names the event the gateway records (e.g. ``"token"``). ``form`` is sent as
        ``application/x-www-form-urlencoded`` in the order given; ``json`` (any
        JSON-serializable value) as ``application/json``; give at most one of them.
        ``secrets``: secret values the request carries that are not in the settings (a
        ticket from an earlier step); ``secret_response_fields``: JSON response fields whose
        values are secret although their names do not say so. The gateway redacts both.

        Raises the classified error (``Transient``, ``TimedOut``, ``InvalidSettings``...)
        when no answer came (connection error, timeout, size cap, egress policy).
        """
        if form is not None and json is not None:
            raise ValueError("send: give form or json, not both")
        method = method.upper()
        if method not in _METHODS:
            raise ValueError(f"send: unsupported method {method}")
        self.step = step
        request = pb.SendRequest(
            call_id=self.call_id,
            step=step,
            method=method,
            url=url,
            headers=[pb.Header(name=n, value=v) for n, v in _pairs(headers)],
            secrets=[s for s in secrets if s],
            secret_response_fields=list(secret_response_fields),
        )
        if form is not None:
            request.form.CopyFrom(
                pb.Form(fields=[pb.FormField(name=n, value=v) for n, v in _pairs(form)])
            )
        elif json is not None:
            request.json = _json.dumps(json, separators=(",", ":"))
        timeout = self._rpc_context.time_remaining() if self._rpc_context else None
        try:
            answer = self._host.send(request, timeout)
        except grpc.RpcError as err:
            raise Transient(f"Host.Send failed: {err.code().name}: {err.details()}", step=step) from None
        if answer.WhichOneof("result") == "response":
            return Response.from_proto(answer.response)
        if answer.WhichOneof("result") == "error":
            error = from_proto(answer.error)
            error.step = error.step or step
            raise error
        raise Transient("Host.Send returned neither a response nor an error", step=step)

    def log(self, level: str, message: str) -> None:
        """Logs ``message`` through the gateway, which scrubs it of this call's secrets.

        ``level``: ``"debug"``, ``"info"``, ``"warn"`` or ``"error"``.
        """
        self._host.log(self.call_id, level, message)
