"""Classified failures a plugin raises; each maps to the protocol's ``Error`` message."""

from __future__ import annotations

import enum

from ._proto import plugin_pb2 as pb


class RejectKind(enum.IntEnum):
    """Why the provider definitely refused (``authgate.plugin.v1.RejectKind``)."""

    #: The credential itself is bad (invalid_client, invalid_grant): the gateway marks it INVALID.
    CREDENTIAL = pb.REJECT_KIND_CREDENTIAL
    #: The requested scope is not allowed: the caller's request is wrong.
    SCOPE = pb.REJECT_KIND_SCOPE
    #: The provider refused the request's shape: a configuration problem, not retried.
    REQUEST = pb.REJECT_KIND_REQUEST


class PluginError(Exception):
    """Base class of the classified failures.

    ``message`` is shown to people (after the gateway scrubs it of secrets); ``step`` names
    the step of the flow that failed. When a handler raises one with an empty ``step``, the
    SDK fills in the step of the last ``Context.send`` of that call.
    """

    kind: int = pb.Error.KIND_UNSPECIFIED

    def __init__(self, message: str, *, step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step

    def to_proto(self) -> pb.Error:
        """The protocol ``Error`` for this failure."""
        return pb.Error(kind=self.kind, message=self.message, step=self.step)


class InvalidSettings(PluginError):
    """The settings are wrong (``KIND_INVALID_CONFIGURATION``).

    The message names the field and what to put there, e.g. ``"base_url: must be an
    http(s) URL"``. Raised from ``validate`` it becomes ``ValidateResponse.error``.
    """

    kind = pb.Error.KIND_INVALID_CONFIGURATION


class Rejected(PluginError):
    """The provider definitely refused (``KIND_REJECTED``).

    ``code`` is the provider's error code (e.g. ``"invalid_grant"``); ``message`` its
    description.
    """

    kind = pb.Error.KIND_REJECTED

    def __init__(
        self, reject_kind: RejectKind, message: str, *, code: str = "", step: str = ""
    ) -> None:
        super().__init__(message, step=step)
        self.reject_kind = RejectKind(reject_kind)
        self.code = code

    def to_proto(self) -> pb.Error:
        error = super().to_proto()
        error.reject_kind = int(self.reject_kind)
        error.code = self.code
        return error


class Transient(PluginError):
    """A failure that may go away by itself (``KIND_TRANSIENT``): retried with backoff.

    ``retry_after`` is how long the provider asked to wait, in seconds (HTTP
    ``Retry-After``), or ``None``.
    """

    kind = pb.Error.KIND_TRANSIENT

    def __init__(
        self, message: str, *, step: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message, step=step)
        self.retry_after = retry_after

    def to_proto(self) -> pb.Error:
        error = super().to_proto()
        if self.retry_after is not None and self.retry_after > 0:
            error.retry_after_ms = int(self.retry_after * 1000)
        return error


class TimedOut(PluginError):
    """The provider did not answer in time (``KIND_TIMED_OUT``)."""

    kind = pb.Error.KIND_TIMED_OUT


class Unsupported(PluginError):
    """The plugin does not do what was asked (``KIND_UNSUPPORTED``)."""

    kind = pb.Error.KIND_UNSUPPORTED

    def __init__(self, message: str = "not supported by this plugin", *, step: str = "") -> None:
        super().__init__(message, step=step)


def from_proto(error: pb.Error) -> PluginError:
    """The exception for a protocol ``Error`` (e.g. one ``Host.Send`` returned)."""
    kind = error.kind
    if kind == pb.Error.KIND_INVALID_CONFIGURATION:
        return InvalidSettings(error.message, step=error.step)
    if kind == pb.Error.KIND_REJECTED:
        try:
            reject_kind = RejectKind(error.reject_kind)
        except ValueError:
            reject_kind = RejectKind.REQUEST
        return Rejected(reject_kind, error.message, code=error.code, step=error.step)
    if kind == pb.Error.KIND_TIMED_OUT:
        return TimedOut(error.message, step=error.step)
    if kind == pb.Error.KIND_UNSUPPORTED:
        return Unsupported(error.message, step=error.step)
    retry_after = error.retry_after_ms / 1000 if error.retry_after_ms else None
    return Transient(error.message, step=error.step, retry_after=retry_after)
