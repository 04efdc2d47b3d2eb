"""The classified failures and their protocol ``Error`` messages, both ways."""

from __future__ import annotations

import unittest

from authgate_plugin import (
    InvalidSettings,
    PluginError,
    Rejected,
    RejectKind,
    TimedOut,
    Transient,
    Unsupported,
)
from authgate_plugin._proto import plugin_pb2 as pb
from authgate_plugin.errors import from_proto


class ToProtoTest(unittest.TestCase):
    def test_each_class_has_its_kind_message_and_step(self) -> None:
        cases = [
            (InvalidSettings("base_url: required", step="settings"), pb.Error.KIND_INVALID_CONFIGURATION),
            (Transient("HTTP 503", step="token"), pb.Error.KIND_TRANSIENT),
            (TimedOut("no answer in 30 s", step="token"), pb.Error.KIND_TIMED_OUT),
            (Unsupported("revocation", step="revoke"), pb.Error.KIND_UNSUPPORTED),
        ]
        for error, kind in cases:
            with self.subTest(type(error).__name__):
                self.assertIsInstance(error, PluginError)
                wire = error.to_proto()
                self.assertEqual(wire.kind, kind)
                self.assertEqual(wire.message, error.message)
                self.assertEqual(wire.step, error.step)
                self.assertEqual(wire.reject_kind, pb.REJECT_KIND_UNSPECIFIED)
                self.assertEqual(wire.code, "")
                self.assertEqual(wire.retry_after_ms, 0)

    def test_rejected_carries_reject_kind_and_code(self) -> None:
        for reject_kind, wire_kind in [
            (RejectKind.CREDENTIAL, pb.REJECT_KIND_CREDENTIAL),
            (RejectKind.SCOPE, pb.REJECT_KIND_SCOPE),
            (RejectKind.REQUEST, pb.REJECT_KIND_REQUEST),
        ]:
            with self.subTest(reject_kind.name):
                wire = Rejected(reject_kind, "HTTP 400 invalid_grant", code="invalid_grant", step="token").to_proto()
                self.assertEqual(wire.kind, pb.Error.KIND_REJECTED)
                self.assertEqual(wire.reject_kind, wire_kind)
                self.assertEqual(wire.code, "invalid_grant")
                self.assertEqual(wire.message, "HTTP 400 invalid_grant")
                self.assertEqual(wire.step, "token")

    def test_rejected_accepts_the_wire_number_as_reject_kind(self) -> None:
        self.assertIs(Rejected(pb.REJECT_KIND_SCOPE, "x").reject_kind, RejectKind.SCOPE)

    def test_transient_retry_after_is_sent_in_milliseconds(self) -> None:
        self.assertEqual(Transient("429", retry_after=0.25).to_proto().retry_after_ms, 250)
        self.assertEqual(Transient("429", retry_after=7).to_proto().retry_after_ms, 7000)
        self.assertEqual(Transient("503").to_proto().retry_after_ms, 0)
        self.assertEqual(Transient("503", retry_after=0).to_proto().retry_after_ms, 0)
        self.assertEqual(Transient("503", retry_after=-3).to_proto().retry_after_ms, 0)

    def test_unsupported_has_a_default_message(self) -> None:
        self.assertEqual(Unsupported().to_proto().message, "not supported by this plugin")


class FromProtoTest(unittest.TestCase):
    def test_round_trip_keeps_class_and_fields(self) -> None:
        errors: list[PluginError] = [
            InvalidSettings("base_url: must be an http(s) URL", step="session"),
            Rejected(RejectKind.CREDENTIAL, "bad client", code="invalid_client", step="token"),
            Rejected(RejectKind.SCOPE, "no", code="invalid_scope", step="token"),
            Rejected(RejectKind.REQUEST, "HTTP 404", code="http_404", step="token"),
            Transient("HTTP 429", step="token", retry_after=1.5),
            Transient("connection refused", step="session"),
            TimedOut("no answer", step="token"),
            Unsupported("revocation", step="revoke"),
        ]
        for error in errors:
            with self.subTest(repr(error.to_proto())):
                back = from_proto(error.to_proto())
                self.assertIs(type(back), type(error))
                self.assertEqual(back.message, error.message)
                self.assertEqual(back.step, error.step)
                self.assertEqual(back.to_proto(), error.to_proto())
                if isinstance(error, Rejected):
                    assert isinstance(back, Rejected)
                    self.assertIs(back.reject_kind, error.reject_kind)
                    self.assertEqual(back.code, error.code)
                if isinstance(error, Transient):
                    assert isinstance(back, Transient)
                    self.assertEqual(back.retry_after, error.retry_after)

    def test_unknown_reject_kind_is_a_request_rejection(self) -> None:
        for reject_kind in (pb.REJECT_KIND_UNSPECIFIED, 99):
            back = from_proto(pb.Error(kind=pb.Error.KIND_REJECTED, reject_kind=reject_kind, code="odd"))
            assert isinstance(back, Rejected)
            self.assertIs(back.reject_kind, RejectKind.REQUEST)
            self.assertEqual(back.code, "odd")

    def test_unspecified_or_unknown_kind_is_transient(self) -> None:
        for kind in (pb.Error.KIND_UNSPECIFIED, 42):
            back = from_proto(pb.Error(kind=kind, message="?", step="token", retry_after_ms=1500))
            assert isinstance(back, Transient)
            self.assertEqual(back.message, "?")
            self.assertEqual(back.step, "token")
            self.assertEqual(back.retry_after, 1.5)

    def test_no_retry_after_is_none(self) -> None:
        back = from_proto(pb.Error(kind=pb.Error.KIND_TRANSIENT, message="HTTP 503"))
        assert isinstance(back, Transient)
        self.assertIsNone(back.retry_after)


if __name__ == "__main__":
    unittest.main()
