"""``serve``: the handshake, the secret check and the ``Provider`` service."""

from __future__ import annotations

import hmac
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc

from ._proto import plugin_pb2 as pb
from ._proto import plugin_pb2_grpc as pb_grpc
from .context import SECRET_METADATA, Context, HostClient
from .errors import InvalidSettings, PluginError, Transient
from .model import Facts, Token
from .plugin import Plugin

PROTOCOL_VERSION = "1"
SOCKET_NAME = "plugin.sock"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
_HINTS = {
    pb.TOKEN_TYPE_HINT_ACCESS_TOKEN: "access_token",
    pb.TOKEN_TYPE_HINT_REFRESH_TOKEN: "refresh_token",
}

T = TypeVar("T")


class SecretInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose ``authgate-plugin-secret`` metadata is not the secret."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {SECRET_METADATA}")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        given = next(
            (
                value
                for key, value in handler_call_details.invocation_metadata or ()
                if key == SECRET_METADATA
            ),
            None,
        )
        if isinstance(given, str):
            given = given.encode()
        if given is None or not hmac.compare_digest(given, self._secret):
            return self._deny
        return continuation(handler_call_details)


def _parse_settings(settings_json: str) -> dict[str, Any]:
    try:
        settings = json.loads(settings_json) if settings_json else {}
    except ValueError:
        raise InvalidSettings("settings: not valid JSON") from None
    if not isinstance(settings, dict):
        raise InvalidSettings("settings: must be a JSON object")
    return settings


def _where(exc: BaseException) -> str:
    """Where an exception was raised (file:line in function), without its arguments."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {Path(last.filename).name}:{last.lineno} in {last.name}"


class ProviderServicer(pb_grpc.ProviderServicer):
    """Adapts a ``Plugin`` to the ``Provider`` service."""

    def __init__(self, plugin: Plugin, host: HostClient) -> None:
        self._plugin = plugin
        self._host = host
        self._description = describe(plugin)

    # -- helpers -----------------------------------------------------------------------

    def _unexpected(self, rpc: str, ctx: Context | None, exc: BaseException) -> Transient:
        """A safe Transient for an unclassified exception; logs type and place, never args."""
        step = ctx.step if ctx else ""
        message = f"plugin failed with {type(exc).__name__} in {rpc}"
        if step:
            message += f" (step {step})"
        self._host.log(ctx.call_id if ctx else "", "error", message + _where(exc))
        return Transient(message, step=step)

    def _call(self, rpc: str, ctx: Context, handler: Callable[[], T]) -> T | pb.Error:
        """Runs a handler; returns its result or the protocol Error it failed with."""
        try:
            return handler()
        except PluginError as exc:
            exc.step = exc.step or ctx.step
            return exc.to_proto()
        except Exception as exc:  # noqa: BLE001 - any failure must become an Error
            return self._unexpected(rpc, ctx, exc).to_proto()

    def _token_result(self, rpc: str, ctx: Context, handler: Callable[[], Token]) -> pb.TokenResult:
        result = self._call(rpc, ctx, lambda: _expect(Token, handler()))
        if isinstance(result, pb.Error):
            return pb.TokenResult(error=result)
        return pb.TokenResult(token=result.to_proto())

    # -- Provider ----------------------------------------------------------------------

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> pb.DescribeResponse:
        return self._description

    def Validate(self, request: pb.ValidateRequest, context: grpc.ServicerContext) -> pb.ValidateResponse:
        try:
            facts = _expect(Facts, self._plugin.validate(_parse_settings(request.settings_json)))
        except PluginError as exc:
            return pb.ValidateResponse(error=exc.message or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001
            # Not the settings' fault as far as we know: a plugin bug, reported as INTERNAL.
            context.abort(grpc.StatusCode.INTERNAL, self._unexpected("Validate", None, exc).message)
        else:
            return facts.to_proto()

    def Fetch(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> pb.TokenResult:
        ctx = Context(self._host, request.call_id, context)
        return self._token_result(
            "Fetch",
            ctx,
            lambda: self._plugin.fetch(
                ctx,
                _parse_settings(request.settings_json),
                list(request.scopes),
                request.refresh_token or None,
            ),
        )

    def Revoke(self, request: pb.RevokeRequest, context: grpc.ServicerContext) -> pb.RevokeResponse:
        ctx = Context(self._host, request.call_id, context)
        result = self._call(
            "Revoke",
            ctx,
            lambda: self._plugin.revoke(
                ctx,
                _parse_settings(request.settings_json),
                request.token,
                _HINTS.get(request.hint, ""),
            ),
        )
        if isinstance(result, pb.Error):
            return pb.RevokeResponse(error=result)
        return pb.RevokeResponse()

    def AuthorizationUrl(
        self, request: pb.AuthorizationUrlRequest, context: grpc.ServicerContext
    ) -> pb.AuthorizationUrlResponse:
        ctx = Context(self._host, request.call_id, context)
        result = self._call(
            "AuthorizationUrl",
            ctx,
            lambda: _expect(
                str,
                self._plugin.authorization_url(
                    ctx,
                    _parse_settings(request.settings_json),
                    list(request.scopes),
                    request.state,
                    request.code_challenge,
                    request.redirect_uri,
                ),
            ),
        )
        if isinstance(result, pb.Error):
            return pb.AuthorizationUrlResponse(error=result)
        return pb.AuthorizationUrlResponse(url=result)

    def ExchangeCode(self, request: pb.ExchangeCodeRequest, context: grpc.ServicerContext) -> pb.TokenResult:
        ctx = Context(self._host, request.call_id, context)
        return self._token_result(
            "ExchangeCode",
            ctx,
            lambda: self._plugin.exchange_code(
                ctx,
                _parse_settings(request.settings_json),
                request.code,
                request.code_verifier,
                request.redirect_uri,
            ),
        )


def _expect(kind: type[T], value: Any) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"handler returned {type(value).__name__}, expected {kind.__name__}")
    return value


def describe(plugin: Plugin) -> pb.DescribeResponse:
    """The ``DescribeResponse`` for a plugin; raises ``ValueError`` if it is ill-formed."""
    if not plugin.kind:
        raise ValueError(f"{type(plugin).__name__}.kind must be set")
    schema = json.dumps(plugin.settings_schema) if plugin.settings_schema is not None else ""
    return pb.DescribeResponse(
        kind=plugin.kind,
        capabilities=plugin.capabilities.to_proto(),
        secret_fields=list(plugin.secret_fields),
        settings_schema_json=schema,
        plugin_version=plugin.version,
    )


def _fail(message: str) -> NoReturn:
    print(f"authgate-plugin: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _environment() -> tuple[str, Path, str]:
    """The handshake's environment: (secret, socket directory, host socket)."""
    version = os.environ.get("AUTHGATE_PLUGIN_PROTOCOL_VERSION")
    if version is None:
        _fail(
            "AUTHGATE_PLUGIN_PROTOCOL_VERSION is not set: this program is an authgate "
            "plugin and is meant to be started by the gateway"
        )
    if version != PROTOCOL_VERSION:
        _fail(
            f"unsupported AUTHGATE_PLUGIN_PROTOCOL_VERSION {version!r}: this plugin speaks "
            f"protocol {PROTOCOL_VERSION}"
        )
    missing = [
        name
        for name in (
            "AUTHGATE_PLUGIN_SECRET",
            "AUTHGATE_PLUGIN_SOCKET_DIR",
            "AUTHGATE_PLUGIN_HOST_SOCKET",
        )
        if not os.environ.get(name)
    ]
    if missing:
        _fail(f"missing environment variable(s): {', '.join(missing)}")
    secret = os.environ["AUTHGATE_PLUGIN_SECRET"]
    if len(secret) != 64 or any(c not in "0123456789abcdefABCDEF" for c in secret):
        _fail("AUTHGATE_PLUGIN_SECRET must be 64 hex digits")
    socket_dir = Path(os.environ["AUTHGATE_PLUGIN_SOCKET_DIR"]).absolute()
    if not socket_dir.is_dir():
        _fail(f"AUTHGATE_PLUGIN_SOCKET_DIR {str(socket_dir)!r} is not a directory")
    return secret, socket_dir, os.environ["AUTHGATE_PLUGIN_HOST_SOCKET"]


def _stop_at_stdin_eof(stop: threading.Event) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    stop.set()


def _default_workers() -> int:
    """One more worker than the calls the gateway sends at once
    (``AUTHGATE_PLUGIN_MAX_CONCURRENT_CALLS``), so its health check never waits behind them."""
    try:
        calls = int(os.environ.get("AUTHGATE_PLUGIN_MAX_CONCURRENT_CALLS", "32"))
    except ValueError:
        calls = 32
    return max(1, min(calls, 1024)) + 1


def serve(plugin: Plugin, *, max_workers: int | None = None) -> NoReturn:
    """Runs ``plugin`` as an authgate plugin: the whole handshake, then serves until SIGTERM.

    Checks the environment the gateway sets (exit status 2 with a message on stderr when
    it is missing or names another protocol version), serves ``Provider`` on
    ``$AUTHGATE_PLUGIN_SOCKET_DIR/plugin.sock`` with the secret check, prints the handshake
    line and blocks. On SIGTERM or SIGINT, or when its standard input closes (the gateway is
    gone), it stops serving and exits with status 0.
    """
    secret, socket_dir, host_socket = _environment()
    if max_workers is None:
        max_workers = _default_workers()
    describe(plugin)  # fail before the handshake when the plugin is ill-formed

    # grpc-core names a Unix socket's path as the HTTP/2 :authority, which is no valid
    # authority for the gateway's HTTP/2 server (it resets the stream): say "localhost".
    channel = grpc.insecure_channel(
        f"unix:{host_socket}",
        options=[
            *_GRPC_OPTIONS,
            ("grpc.enable_http_proxy", 0),
            ("grpc.default_authority", "localhost"),
        ],
    )
    host = HostClient(channel, secret)
    plugin._host = host
    servicer = ProviderServicer(plugin, host)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # The gateway holds our standard input open while it runs: when it closes (the gateway
    # exited, even by SIGKILL), stop too, so no plugin outlives its gateway.
    threading.Thread(target=_stop_at_stdin_eof, args=(stop,), daemon=True).start()

    socket_path = socket_dir / SOCKET_NAME
    socket_path.unlink(missing_ok=True)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="authgate-plugin"),
        interceptors=[SecretInterceptor(secret)],
        options=_GRPC_OPTIONS,
        maximum_concurrent_rpcs=max_workers * 4,
    )
    pb_grpc.add_ProviderServicer_to_server(servicer, server)
    try:
        server.add_insecure_port(f"unix:{socket_path}")
    except RuntimeError:
        _fail(f"cannot listen on Unix socket {str(socket_path)!r}")
    server.start()
    os.chmod(socket_path, 0o600)

    print(f"authgate-plugin|{PROTOCOL_VERSION}|unix|{socket_path}", flush=True)

    stop.wait()
    server.stop(grace=2).wait()
    channel.close()
    socket_path.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # A handler stuck in a call (e.g. a hung upstream) would block the interpreter's exit
    # while it joins the worker threads; everything is cleaned up, so leave at once.
    os._exit(0)
