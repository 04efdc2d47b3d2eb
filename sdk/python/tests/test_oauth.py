"""RFC 6749 helpers: classification of error answers, token parsing, Retry-After."""

from __future__ import annotations

import email.utils
import json
import time
import unittest
from typing import Any

from authgate_plugin import (
    Rejected,
    RejectKind,
    Response,
    Token,
    Transient,
    parse_oauth_token,
    raise_for_oauth_error,
)
from authgate_plugin._proto import plugin_pb2 as pb


def response(status: int, body: Any = None, headers: list[tuple[str, str]] | None = None) -> Response:
    if isinstance(body, (dict, list)):
        raw = json.dumps(body).encode()
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = b""
    return Response(status=status, headers=tuple(headers or ()), body=raw)


class RaiseForOAuthErrorTest(unittest.TestCase):
    def test_success_returns(self) -> None:
        for status in (200, 201, 204, 299):
            self.assertIsNone(raise_for_oauth_error("token", response(status, {"error": "ignored"})))

    def test_408_429_and_5xx_are_transient_with_retry_after(self) -> None:
        for status in (408, 429, 500, 502, 503, 599):
            with self.subTest(status):
                with self.assertRaises(Transient) as caught:
                    raise_for_oauth_error(
                        "token",
                        response(status, {"error": "temporarily_unavailable"}, [("Retry-After", "7")]),
                    )
                error = caught.exception
                self.assertEqual(error.step, "token")
                self.assertEqual(error.retry_after, 7.0)
                self.assertIn(f"HTTP {status}", error.message)
                self.assertEqual(error.to_proto().retry_after_ms, 7000)

    def test_statuses_outside_4xx_are_transient(self) -> None:
        # A redirect (the gateway follows none) or anything else that is neither 2xx nor 4xx.
        for status in (100, 301, 302, 304, 600):
            with self.subTest(status):
                with self.assertRaises(Transient) as caught:
                    raise_for_oauth_error("token", response(status, {"error": "invalid_grant"}))
                self.assertIn(f"HTTP {status}", caught.exception.message)

    def test_transient_without_retry_after(self) -> None:
        with self.assertRaises(Transient) as caught:
            raise_for_oauth_error("token", response(503, "<html>down</html>"))
        self.assertIsNone(caught.exception.retry_after)
        self.assertEqual(caught.exception.to_proto().retry_after_ms, 0)

    def test_credential_errors_reject_the_credential(self) -> None:
        for status, code in [(400, "invalid_grant"), (401, "invalid_client"), (400, "unauthorized_client")]:
            with self.subTest(code):
                with self.assertRaises(Rejected) as caught:
                    raise_for_oauth_error(
                        "refresh",
                        response(status, {"error": code, "error_description": "refresh token expired"}),
                    )
                error = caught.exception
                self.assertIs(error.reject_kind, RejectKind.CREDENTIAL)
                self.assertEqual(error.code, code)
                self.assertEqual(error.step, "refresh")
                self.assertEqual(error.message, f"HTTP {status} {code}: refresh token expired")
                wire = error.to_proto()
                self.assertEqual(wire.kind, pb.Error.KIND_REJECTED)
                self.assertEqual(wire.reject_kind, pb.REJECT_KIND_CREDENTIAL)

    def test_invalid_scope_rejects_the_scope(self) -> None:
        with self.assertRaises(Rejected) as caught:
            raise_for_oauth_error("token", response(400, {"error": "invalid_scope"}))
        self.assertIs(caught.exception.reject_kind, RejectKind.SCOPE)
        self.assertEqual(caught.exception.code, "invalid_scope")
        self.assertEqual(caught.exception.message, "HTTP 400 invalid_scope")

    def test_other_codes_reject_the_request(self) -> None:
        for code in ("invalid_request", "unsupported_grant_type", "access_denied", "vendor_specific"):
            with self.subTest(code):
                with self.assertRaises(Rejected) as caught:
                    raise_for_oauth_error("token", response(400, {"error": code}))
                self.assertIs(caught.exception.reject_kind, RejectKind.REQUEST)
                self.assertEqual(caught.exception.code, code)

    def test_4xx_without_an_oauth_error_is_http_status(self) -> None:
        cases = [
            (404, "<html>not found</html>"),
            (403, None),
            (400, {"message": "no error field"}),
            (400, {"error": 42}),
            (401, ["not", "an", "object"]),
            (499, ""),
        ]
        for status, body in cases:
            with self.subTest(status=status, body=body):
                with self.assertRaises(Rejected) as caught:
                    raise_for_oauth_error("session", response(status, body))
                error = caught.exception
                self.assertIs(error.reject_kind, RejectKind.REQUEST)
                self.assertEqual(error.code, f"http_{status}")
                self.assertEqual(error.message, f"HTTP {status}")
                self.assertEqual(error.step, "session")


class ParseOAuthTokenTest(unittest.TestCase):
    def test_full_answer(self) -> None:
        token = parse_oauth_token(
            "token",
            response(
                200,
                {
                    "access_token": "at-1",
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "refresh_token": "rt-1",
                    "scope": "read  write",
                    "extra": "ignored",
                },
            ),
        )
        self.assertEqual(
            token,
            Token(
                access_token="at-1",
                token_type="bearer",
                expires_in=3600,
                granted_scopes=["read", "write"],
                refresh_token="rt-1",
            ),
        )
        wire = token.to_proto()
        self.assertEqual(wire.expires_in_seconds, 3600)
        self.assertEqual(wire.expires_at_unix, 0)
        self.assertEqual(list(wire.granted_scopes), ["read", "write"])

    def test_minimal_answer_has_defaults(self) -> None:
        token = parse_oauth_token("token", response(200, {"access_token": "at-2"}))
        self.assertEqual(token.token_type, "Bearer")
        self.assertEqual(token.expires_in, 0)
        self.assertEqual(token.granted_scopes, [])
        self.assertEqual(token.refresh_token, "")

    def test_expires_in_is_read_leniently(self) -> None:
        for value, expected in [("3600", 3600), (59.9, 59), (-5, 0), (True, 0), ("soon", 0), (None, 0)]:
            with self.subTest(value=value):
                token = parse_oauth_token("token", response(200, {"access_token": "a", "expires_in": value}))
                self.assertEqual(token.expires_in, expected)

    def test_non_string_fields_are_ignored(self) -> None:
        token = parse_oauth_token(
            "token",
            response(200, {"access_token": "a", "token_type": 5, "refresh_token": 7, "scope": ["x"]}),
        )
        self.assertEqual((token.token_type, token.refresh_token, token.granted_scopes), ("Bearer", "", []))

    def test_malformed_success_is_transient(self) -> None:
        for body in ("<html>ok</html>", ["a"], {"token_type": "Bearer"}, {"access_token": ""}, {"access_token": 1}):
            with self.subTest(body=body):
                with self.assertRaises(Transient) as caught:
                    parse_oauth_token("token", response(200, body))
                self.assertEqual(caught.exception.step, "token")
                self.assertIn("HTTP 200", caught.exception.message)

    def test_error_answers_are_classified(self) -> None:
        with self.assertRaises(Rejected) as caught:
            parse_oauth_token("token", response(400, {"error": "invalid_grant"}))
        self.assertIs(caught.exception.reject_kind, RejectKind.CREDENTIAL)
        with self.assertRaises(Transient):
            parse_oauth_token("token", response(502, "bad gateway"))


class RetryAfterTest(unittest.TestCase):
    def test_delta_seconds(self) -> None:
        self.assertEqual(response(429, headers=[("Retry-After", "120")]).retry_after(), 120.0)
        self.assertEqual(response(429, headers=[("retry-after", " 0 ")]).retry_after(), 0.0)

    def test_http_date(self) -> None:
        future = email.utils.formatdate(time.time() + 90, usegmt=True)
        wait = response(503, headers=[("RETRY-AFTER", future)]).retry_after()
        assert wait is not None
        self.assertGreater(wait, 80)
        self.assertLessEqual(wait, 91)

    def test_http_date_in_the_past_is_zero(self) -> None:
        self.assertEqual(
            response(503, headers=[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")]).retry_after(),
            0.0,
        )

    def test_absent_or_unreadable_is_none(self) -> None:
        self.assertIsNone(response(503).retry_after())
        self.assertIsNone(response(503, headers=[("Retry-After", "soon")]).retry_after())
        self.assertIsNone(response(503, headers=[("Retry-After", "-5")]).retry_after())

    def test_first_header_wins(self) -> None:
        r = response(429, headers=[("x-other", "1"), ("Retry-After", "3"), ("Retry-After", "9")])
        self.assertEqual(r.retry_after(), 3.0)
        self.assertEqual(r.header("X-OTHER"), "1")
        self.assertIsNone(r.header("missing"))


class ResponseTest(unittest.TestCase):
    def test_from_proto_and_accessors(self) -> None:
        r = Response.from_proto(
            pb.HttpResponse(
                status=200,
                headers=[pb.Header(name="content-type", value="application/json")],
                body=b'{"a": 1}',
            )
        )
        self.assertTrue(r.ok)
        self.assertEqual(r.headers, (("content-type", "application/json"),))
        self.assertEqual(r.json(), {"a": 1})
        self.assertEqual(r.json_object(), {"a": 1})
        self.assertEqual(r.text, '{"a": 1}')
        self.assertFalse(response(404).ok)
        self.assertIsNone(response(200, "[1]").json_object())
        self.assertIsNone(response(200, "not json").json_object())
        with self.assertRaises(ValueError):
            response(200, "not json").json()


if __name__ == "__main__":
    unittest.main()
