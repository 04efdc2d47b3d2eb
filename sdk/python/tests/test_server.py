"""The Provider service as the gateway sees it: the secret check on a real gRPC server on a
Unix socket, the mapping of handlers' results and failures, and ``Context.send``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import unittest
from concurrent import futures
from typing import Any

import grpc

from authgate_plugin import (
    Capabilities,
    Context,
    Facts,
    InvalidSettings,
    Plugin,
    Rejected,
    RejectKind,
    Token,
    Transient,
)
from authgate_plugin._proto import plugin_pb2 as pb
from authgate_plugin._proto import plugin_pb2_grpc as pb_grpc
from authgate_plugin.context import SECRET_METADATA
from authgate_plugin.server import ProviderServicer, SecretInterceptor

SECRET = "0123456789abcdef" * 4
CANARY = "canary-7f3a9c-do-not-leak"


class FakeHost:
    """Stands in for ``HostClient``: records calls, answers ``send`` from a queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[pb.SendRequest, float | None]] = []
        self.logs: list[tuple[str, str, str]] = []
        self.answers: list[pb.SendResponse | grpc.RpcError] = []

    def send(self, request: pb.SendRequest, timeout: float | None) -> pb.SendResponse:
        self.sent.append((request, timeout))
        answer = self.answers.pop(0) if self.answers else pb.SendResponse(
            response=pb.HttpResponse(status=200, body=b'{"access_token": "at-from-host"}')
        )
        if isinstance(answer, grpc.RpcError):
            raise answer
        return answer

    def log(self, call_id: str, level: str, message: str) -> None:
        self.logs.append((call_id, level, message))


class HostRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "unknown call_id"


class TinyPlugin(Plugin):
    """Each handler does what the settings' ``behaviour`` says."""

    kind = "tiny"
    version = "9.9.9"
    secret_fields = ["api_secret", "nested_secret"]
    capabilities = Capabilities(revoke=True, refresh_token=True)
    settings_schema = {"type": "object"}

    def __init__(self) -> None:
        self.fetches = 0

    def validate(self, settings: dict[str, Any]) -> Facts:
        behaviour = settings.get("behaviour")
        if behaviour == "invalid":
            raise InvalidSettings("base_url: required, an http(s) URL")
        if behaviour == "crash":
            raise RuntimeError(f"validate exploded with {CANARY}")
        return Facts(default_scopes=["read"], refresh_token_idle_lifetime_seconds=600)

    def fetch(
        self, ctx: Context, settings: dict[str, Any], scopes: list[str], refresh_token: str | None
    ) -> Token:
        self.fetches += 1
        behaviour = settings.get("behaviour")
        if behaviour == "crash":
            raise RuntimeError(f"api_secret was {CANARY}")
        if behaviour == "crash_after_send":
            ctx.send("session", "POST", "https://idp.example.com/session", json={"k": "v"})
            raise KeyError(CANARY)
        if behaviour == "wrong_type":
            return {"access_token": CANARY}  # type: ignore[return-value]
        if behaviour == "reject_after_send":
            ctx.send("token", "POST", "https://idp.example.com/token")
            raise Rejected(RejectKind.CREDENTIAL, "HTTP 400 invalid_grant", code="invalid_grant")
        if behaviour == "send":
            response = ctx.send("token", "POST", "https://idp.example.com/token", form={"a": "1"})
            return Token(access_token=response.json()["access_token"])
        return Token(
            access_token=f"at-{','.join(scopes)}-{refresh_token or 'none'}",
            expires_in=60,
            metadata={"region": "eu"},
        )


class ServerTest(unittest.TestCase):
    """A real grpc server on a Unix socket in a temporary directory."""

    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="agp-")
        self.addCleanup(self.dir.cleanup)
        self.socket = os.path.join(self.dir.name, "plugin.sock")
        self.host = FakeHost()
        self.plugin = TinyPlugin()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=[SecretInterceptor(SECRET)]
        )
        pb_grpc.add_ProviderServicer_to_server(ProviderServicer(self.plugin, self.host), self.server)
        self.server.add_insecure_port(f"unix:{self.socket}")
        self.server.start()
        self.addCleanup(lambda: self.server.stop(grace=None).wait())
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.addCleanup(self.channel.close)
        self.stub = pb_grpc.ProviderStub(self.channel)

    def authed(self, secret: str = SECRET) -> tuple[tuple[str, str], ...]:
        return ((SECRET_METADATA, secret),)

    def test_describe_with_the_secret(self) -> None:
        answer = self.stub.Describe(pb.DescribeRequest(), metadata=self.authed(), timeout=10)
        self.assertEqual(answer.kind, "tiny")
        self.assertEqual(answer.plugin_version, "9.9.9")
        self.assertEqual(list(answer.secret_fields), ["api_secret", "nested_secret"])
        self.assertTrue(answer.capabilities.revoke)
        self.assertTrue(answer.capabilities.refresh_token)
        self.assertFalse(answer.capabilities.authorization_code)
        self.assertEqual(answer.settings_schema_json, '{"type": "object"}')

    def test_calls_without_the_right_secret_are_refused(self) -> None:
        for metadata in [None, self.authed("f" * 64), self.authed(SECRET[:-1]), self.authed(""),
                         (("authgate-plugin-other", SECRET),)]:
            with self.subTest(metadata=metadata):
                with self.assertRaises(grpc.RpcError) as caught:
                    self.stub.Describe(pb.DescribeRequest(), metadata=metadata, timeout=10)
                self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                self.assertIn(SECRET_METADATA, caught.exception.details())
        with self.assertRaises(grpc.RpcError) as caught:
            self.stub.Fetch(pb.FetchRequest(call_id="c1", settings_json="{}"), timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.plugin.fetches, 0, "a refused call must not reach the handler")

    def test_validate(self) -> None:
        ok = self.stub.Validate(pb.ValidateRequest(settings_json="{}"), metadata=self.authed(), timeout=10)
        self.assertEqual(ok.error, "")
        self.assertEqual(list(ok.default_scopes), ["read"])
        self.assertEqual(ok.refresh_token_idle_lifetime_seconds, 600)
        invalid = self.stub.Validate(
            pb.ValidateRequest(settings_json='{"behaviour": "invalid"}'), metadata=self.authed(), timeout=10
        )
        self.assertEqual(invalid.error, "base_url: required, an http(s) URL")
        for text, expected in [("not json", "settings: not valid JSON"), ("[1]", "settings: must be a JSON object")]:
            answer = self.stub.Validate(pb.ValidateRequest(settings_json=text), metadata=self.authed(), timeout=10)
            self.assertEqual(answer.error, expected)

    def test_validate_crash_is_internal_naming_only_the_type(self) -> None:
        with capture_everything() as captured:
            with self.assertRaises(grpc.RpcError) as caught:
                self.stub.Validate(
                    pb.ValidateRequest(settings_json='{"behaviour": "crash"}'), metadata=self.authed(), timeout=10
                )
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INTERNAL)
        self.assertEqual(caught.exception.details(), "plugin failed with RuntimeError in Validate")
        self.assertNotIn(CANARY, captured.getvalue() + repr(self.host.logs))

    def test_fetch_token(self) -> None:
        result = self.stub.Fetch(
            pb.FetchRequest(call_id="c1", settings_json="{}", scopes=["a", "b"], refresh_token="rt"),
            metadata=self.authed(),
            timeout=10,
        )
        self.assertEqual(result.WhichOneof("result"), "token")
        self.assertEqual(result.token.access_token, "at-a,b-rt")
        self.assertEqual(result.token.expires_in_seconds, 60)
        self.assertEqual(dict(result.token.metadata), {"region": "eu"})
        none = self.stub.Fetch(pb.FetchRequest(call_id="c2", settings_json="{}"), metadata=self.authed(), timeout=10)
        self.assertEqual(none.token.access_token, "at--none")

    def test_fetch_sends_through_the_host_with_the_call_id_and_deadline(self) -> None:
        result = self.stub.Fetch(
            pb.FetchRequest(call_id="call-42", settings_json='{"behaviour": "send"}'),
            metadata=self.authed(),
            timeout=10,
        )
        self.assertEqual(result.token.access_token, "at-from-host")
        [(request, timeout)] = self.host.sent
        self.assertEqual(request.call_id, "call-42")
        self.assertEqual(request.step, "token")
        self.assertEqual(request.method, "POST")
        self.assertEqual([(f.name, f.value) for f in request.form.fields], [("a", "1")])
        # The time left of the gateway's deadline (grpc-timeout rounds it up a little).
        assert timeout is not None
        self.assertTrue(0 < timeout <= 11, timeout)

    def test_classified_failure_gets_the_step_of_the_last_send(self) -> None:
        result = self.stub.Fetch(
            pb.FetchRequest(call_id="c", settings_json='{"behaviour": "reject_after_send"}'),
            metadata=self.authed(),
            timeout=10,
        )
        self.assertEqual(result.WhichOneof("result"), "error")
        self.assertEqual(result.error.kind, pb.Error.KIND_REJECTED)
        self.assertEqual(result.error.reject_kind, pb.REJECT_KIND_CREDENTIAL)
        self.assertEqual(result.error.code, "invalid_grant")
        self.assertEqual(result.error.step, "token")

    def test_unexpected_exception_is_transient_naming_only_its_type(self) -> None:
        cases = [
            ("crash", "plugin failed with RuntimeError in Fetch", ""),
            ("crash_after_send", "plugin failed with KeyError in Fetch (step session)", "session"),
            ("wrong_type", "plugin failed with TypeError in Fetch", ""),
        ]
        for behaviour, message, step in cases:
            with self.subTest(behaviour):
                self.host.logs.clear()
                with capture_everything() as captured:
                    result = self.stub.Fetch(
                        pb.FetchRequest(call_id="c-" + behaviour, settings_json=f'{{"behaviour": "{behaviour}"}}'),
                        metadata=self.authed(),
                        timeout=10,
                    )
                self.assertEqual(result.WhichOneof("result"), "error")
                error = result.error
                self.assertEqual(error.kind, pb.Error.KIND_TRANSIENT)
                self.assertEqual(error.message, message)
                self.assertEqual(error.step, step)
                self.assertEqual((error.code, error.reject_kind, error.retry_after_ms), ("", 0, 0))
                # The log line says where, for the operator, and nothing of the arguments.
                [(call_id, level, line)] = self.host.logs
                self.assertEqual((call_id, level), ("c-" + behaviour, "error"))
                self.assertTrue(line.startswith(message + " at "), line)
                if behaviour != "wrong_type":
                    self.assertIn("test_server.py:", line)
                everything = (
                    result.SerializeToString().decode("utf-8", "replace")
                    + str(result)
                    + repr(self.host.logs)
                    + repr([r for r, _ in self.host.sent])
                    + captured.getvalue()
                )
                self.assertNotIn(CANARY, everything)

    def test_revoke_and_unsupported_handlers(self) -> None:
        revoked = self.stub.Revoke(
            pb.RevokeRequest(call_id="r", settings_json="{}", token="t", hint=pb.TOKEN_TYPE_HINT_ACCESS_TOKEN),
            metadata=self.authed(),
            timeout=10,
        )
        # TinyPlugin does not override revoke: the base class says Unsupported.
        self.assertTrue(revoked.HasField("error"))
        self.assertEqual(revoked.error.kind, pb.Error.KIND_UNSUPPORTED)
        url = self.stub.AuthorizationUrl(
            pb.AuthorizationUrlRequest(call_id="a", settings_json="{}"), metadata=self.authed(), timeout=10
        )
        self.assertEqual(url.error.kind, pb.Error.KIND_UNSUPPORTED)
        code = self.stub.ExchangeCode(
            pb.ExchangeCodeRequest(call_id="x", settings_json="{}"), metadata=self.authed(), timeout=10
        )
        self.assertEqual(code.error.kind, pb.Error.KIND_UNSUPPORTED)


class ContextSendTest(unittest.TestCase):
    def setUp(self) -> None:
        self.host = FakeHost()
        self.ctx = Context(self.host, "call-1")  # type: ignore[arg-type]

    def test_request_shape(self) -> None:
        self.ctx.send(
            "session",
            "post",
            "https://idp.example.com/session",
            headers=[("authorization", "Basic abc")],
            json={"b": 1, "a": [True, None]},
            secrets=["ticket-1", ""],
            secret_response_fields=["ticket"],
        )
        [(request, timeout)] = self.host.sent
        self.assertIsNone(timeout)
        self.assertEqual(request.call_id, "call-1")
        self.assertEqual(request.method, "POST")
        self.assertEqual([(h.name, h.value) for h in request.headers], [("authorization", "Basic abc")])
        self.assertEqual(request.WhichOneof("body"), "json")
        self.assertEqual(request.json, '{"b":1,"a":[true,null]}')
        self.assertEqual(list(request.secrets), ["ticket-1"])
        self.assertEqual(list(request.secret_response_fields), ["ticket"])
        self.assertEqual(self.ctx.step, "session")

    def test_form_keeps_order_and_no_body_when_none(self) -> None:
        self.ctx.send("token", "POST", "https://x", form={"z": "1", "a": "2"})
        self.ctx.send("get", "GET", "https://x")
        form_request, get_request = (r for r, _ in self.host.sent)
        self.assertEqual([(f.name, f.value) for f in form_request.form.fields], [("z", "1"), ("a", "2")])
        self.assertIsNone(get_request.WhichOneof("body"))

    def test_bad_arguments_are_refused_before_sending(self) -> None:
        with self.assertRaises(ValueError):
            self.ctx.send("s", "POST", "https://x", form={"a": "1"}, json={"a": 1})
        with self.assertRaises(ValueError):
            self.ctx.send("s", "TRACE", "https://x")
        self.assertEqual(self.host.sent, [])

    def test_error_answer_raises_the_classified_error(self) -> None:
        self.host.answers.append(
            pb.SendResponse(
                error=pb.Error(kind=pb.Error.KIND_TRANSIENT, message="connection refused", retry_after_ms=2000)
            )
        )
        with self.assertRaises(Transient) as caught:
            self.ctx.send("token", "POST", "https://x")
        self.assertEqual(caught.exception.step, "token")
        self.assertEqual(caught.exception.retry_after, 2.0)
        self.host.answers.append(
            pb.SendResponse(error=pb.Error(kind=pb.Error.KIND_INVALID_CONFIGURATION, message="egress", step="own"))
        )
        with self.assertRaises(InvalidSettings) as refused:
            self.ctx.send("token", "POST", "https://10.0.0.1/")
        self.assertEqual(refused.exception.step, "own")

    def test_host_failure_is_transient(self) -> None:
        self.host.answers.append(HostRpcError(grpc.StatusCode.FAILED_PRECONDITION))
        with self.assertRaises(Transient) as caught:
            self.ctx.send("token", "POST", "https://x")
        self.assertTrue(
            caught.exception.message.startswith("Host.Send failed: FAILED_PRECONDITION"),
            caught.exception.message,
        )
        self.assertEqual(caught.exception.step, "token")
        self.host.answers.append(pb.SendResponse())
        with self.assertRaises(Transient):
            self.ctx.send("token", "POST", "https://x")

    def test_log_goes_to_the_host_with_the_call_id(self) -> None:
        self.ctx.log("warn", "careful")
        self.assertEqual(self.host.logs, [("call-1", "warn", "careful")])


@contextlib.contextmanager
def capture_everything():
    """Captures stdout, stderr and every logging record (grpc's included) while active."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


if __name__ == "__main__":
    unittest.main()
