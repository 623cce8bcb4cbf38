"""Typed errors. Each names the step that failed and the bad value, so the CLI can print
one clear line and the gRPC layer can map it to a status code in one place."""
from __future__ import annotations


class QfarmError(Exception):
    """Base of every error a user can cause; never shown with a traceback."""

    step = "qfarm"

    def __init__(self, message: str, *, step: str | None = None):
        super().__init__(message)
        if step is not None:
            self.step = step

    def __str__(self) -> str:  # "prepare/check: model.onnx is not an ONNX model (...)"
        return f"{self.step}: {self.args[0]}"


class InvalidArgument(QfarmError):
    """A flag, spec field or RPC field has a bad value."""

    step = "input"


class NotFound(QfarmError):
    """A file, candidate, campaign or artifact does not exist."""

    step = "input"


class ModelError(QfarmError):
    """The model cannot be loaded, checked, prepared or quantized."""

    step = "prepare"


class DataError(QfarmError):
    """Images or labels cannot be read or do not fit the model."""

    step = "data"


class EvaluationError(QfarmError):
    """A runtime failed to run a model."""

    step = "evaluate"


class Unauthenticated(QfarmError):
    step = "auth"


class ResourceExhausted(QfarmError):
    step = "limits"


class FailedPrecondition(QfarmError):
    """The request is valid but the state does not allow it (e.g. a lease that expired)."""

    step = "state"


class PermissionDenied(QfarmError):
    """The caller is who it says, but may not do this: a role's token used for another role's call,
    an agent acting on a job it does not hold, or an agent identity that does not check out."""

    step = "permission"


class DeadlineExceeded(QfarmError):
    """A call ran past a server-side deadline (a stalled upload, a stream open too long)."""

    step = "limits"
