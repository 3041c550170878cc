"""Every way a call can fail, as an exception under one base class, `ForkpoolError`.

Two families:

- `ServiceError`: the service answered with an error. Its `kind` is the protocol's error
  kind (DESIGN.md §5), and each kind has its own class (`except forkpool.QueueFull:`). A kind
  this version does not know is a plain `ServiceError` that keeps the kind, so a newer
  service never breaks an older client.
- The client's own failures, where no answer came: `Unreachable` (no connection could be
  opened; names the socket path tried), `ConnectionLost` and `CallTimeout` (a request may
  have reached the service; `sent` says whether it could have), `ProtocolError` (an answer
  that is not the protocol). Their `kind` is None.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "ForkpoolError",
    "ServiceError",
    "BadRequest",
    "TooLarge",
    "UnknownOp",
    "UnknownJob",
    "InvalidArgs",
    "QueueFull",
    "Timeout",
    "WorkerLost",
    "DbError",
    "DbUnavailable",
    "JobFailed",
    "ShuttingDown",
    "Forbidden",
    "TooManyClients",
    "Internal",
    "NotFound",
    "InvalidConfig",
    "Unreachable",
    "ConnectionLost",
    "CallTimeout",
    "ProtocolError",
]


class ForkpoolError(Exception):
    """Base of every error this package raises.

    `kind` is the protocol's error kind for errors the service answered, None for the
    client's own; `message` is for a person.
    """

    kind: Optional[str] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.kind else self.message


class ServiceError(ForkpoolError):
    """The service answered with an error; `error` is the error object as it came."""

    def __init__(self, message: str, *, kind: Optional[str] = None,
                 error: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.error: Dict[str, Any] = dict(error) if error is not None else {}


class BadRequest(ServiceError):
    """The request was not a request: not JSON, a missing, mistyped or unknown field."""

    kind = "bad_request"


class TooLarge(ServiceError):
    """The request line was longer than `service.max_request_bytes`; the service closed the
    connection (the client opens a new one for the next call)."""

    kind = "too_large"


class UnknownOp(ServiceError):
    """No such op."""

    kind = "unknown_op"


class UnknownJob(ServiceError):
    """No job of that name; the message lists the jobs there are."""

    kind = "unknown_job"


class InvalidArgs(ServiceError):
    """An argument missing, unknown, or of the wrong type; the message names it. Checked
    before the job reaches a worker: nothing ran."""

    kind = "invalid_args"


class QueueFull(ServiceError):
    """The queue holds `service.queue_limit` jobs; nothing ran, try again later."""

    kind = "queue_full"


class Timeout(ServiceError):
    """The job ran past its timeout; the service cancelled it and rolled it back."""

    kind = "timeout"


class WorkerLost(ServiceError):
    """The worker died while running the job (the message gives the signal or exit code).
    Whether the job's transaction committed before that is unknown."""

    kind = "worker_lost"


class DbError(ServiceError):
    """PostgreSQL refused the job and its transaction was rolled back.

    `sqlstate` is the five-character SQLSTATE (`"23505"` for a unique violation); `detail`
    and `hint` are the server's, when it gave them.
    """

    kind = "db_error"

    def __init__(self, message: str, *, kind: Optional[str] = None,
                 error: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(message, kind=kind, error=error)
        self.sqlstate: Optional[str] = self.error.get("sqlstate")
        self.detail: Optional[str] = self.error.get("detail")
        self.hint: Optional[str] = self.error.get("hint")

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (SQLSTATE {self.sqlstate})" if self.sqlstate else text


class DbUnavailable(ServiceError):
    """No database connection could be had within `checkout_timeout`; the job did not run."""

    kind = "db_unavailable"


class JobFailed(ServiceError):
    """A Rust handler could not do its work: its own error, not a bug."""

    kind = "job_failed"


class ShuttingDown(ServiceError):
    """The service is stopping and did not run the job."""

    kind = "shutting_down"


class Forbidden(ServiceError):
    """Neither this process's uid nor its primary gid is allowed (`service.allowed_uids`,
    `service.allowed_gids`): the service closed the connection. Or an operator's op
    (`reload`, `stop`, `scale`) from a uid that is not in `service.admin_uids`: the
    connection stays open."""

    kind = "forbidden"


class TooManyClients(ServiceError):
    """The service already holds `service.max_clients` connections; it closed this one."""

    kind = "too_many_clients"


class Internal(ServiceError):
    """A bug in the service (or a Rust handler's panic); the message says where."""

    kind = "internal"


class NotFound(ServiceError):
    """No durable job with that id."""

    kind = "not_found"


class InvalidConfig(ServiceError):
    """A `reload` found the configuration or the catalog wrong (`error["problems"]` lists
    each problem); the running configuration is kept."""

    kind = "invalid_config"


class Unreachable(ForkpoolError):
    """No connection to the service could be opened. Nothing was sent."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot reach the forkpool service at {path}: {reason}")
        self.path = path
        self.reason = reason


class ConnectionLost(ForkpoolError):
    """The connection broke before the answer came.

    `sent` is True when the request may have reached the service: a `run` may then have run
    (and committed). The client never sends such a request again by itself.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class CallTimeout(ForkpoolError):
    """No answer came within the call's deadline; the client stopped waiting and closed the
    connection. `sent` as for `ConnectionLost`: the job's outcome is unknown."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class ProtocolError(ForkpoolError):
    """The service sent something that is not an answer to a request of this connection;
    the client closed the connection."""


_KINDS: Dict[str, Type[ServiceError]] = {
    cls.kind: cls
    for cls in (BadRequest, TooLarge, UnknownOp, UnknownJob, InvalidArgs, QueueFull, Timeout,
                WorkerLost, DbError, DbUnavailable, JobFailed, ShuttingDown, Forbidden,
                TooManyClients, Internal, NotFound, InvalidConfig)
    if cls.kind is not None
}


def error_from_answer(error: Any) -> ServiceError:
    """The exception for an answer's `error` object: the class of its kind, or a plain
    `ServiceError` keeping a kind this version does not know."""
    if not isinstance(error, Mapping):
        return ServiceError(f"the service answered an error without details: {error!r}",
                            kind="unknown", error={})
    kind = error.get("kind")
    message = error.get("message")
    if not isinstance(message, str):
        message = f"(no message) {dict(error)!r}"
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return ServiceError(message, kind=str(kind), error=error)
    return cls(message, error=error)
