"""Durable jobs (DESIGN.md §12) on the client side: the fields of `enqueue`, `result` and
`cancel`, and their answers as typed values. Shared by `Client` and `AsyncClient`; nothing
here touches a socket."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Union

from .errors import ProtocolError

__all__ = ["EnqueuedJob", "JobResult", "FINAL_STATES", "DURABLE_WAIT"]

#: The states a durable job ends in; `result(wait=...)` answers once the job reaches one.
FINAL_STATES = frozenset({"completed", "discarded", "cancelled"})

#: Seconds `enqueue`, `result` and `cancel` wait for their answer by default (for `result`
#: with `wait`, beyond the wait): each is a statement or two in the queue's database, which
#: may first have to wait `checkout_timeout` for a connection.
DURABLE_WAIT = 30.0


@dataclasses.dataclass(frozen=True)
class EnqueuedJob:
    """What `enqueue` answers: the job's id, its state (`available`), and whether an
    `available` or `running` job with the same `unique_key` was there already (then
    `job_id` is that job's)."""

    job_id: int
    state: str
    duplicate: bool


@dataclasses.dataclass(frozen=True)
class JobResult:
    """A durable job as `result` found it: a row of `forkpool.jobs`.

    `result` is the `run` result object (`{"rows": [...], ...}`) once `completed`, else
    None; `errors` has one object per failed attempt (`attempt`, `at`, `kind`, `message`,
    `sqlstate`). Times are timezone-aware datetimes, None when not yet reached.
    """

    job_id: int
    job: str
    state: str
    attempt: int
    max_attempts: int
    queue: str
    run_at: Optional[datetime.datetime]
    created_at: Optional[datetime.datetime]
    attempted_at: Optional[datetime.datetime]
    finished_at: Optional[datetime.datetime]
    result: Optional[Dict[str, Any]]
    errors: List[Dict[str, Any]]

    @property
    def finished(self) -> bool:
        """True once the job is `completed`, `discarded` or `cancelled`."""
        return self.state in FINAL_STATES

    @property
    def rows(self) -> Optional[List[Dict[str, Any]]]:
        """The result's rows, None until the job completed."""
        return None if self.result is None else self.result.get("rows")


JobRef = Union[int, EnqueuedJob]


def enqueue_fields(job: str, args: Optional[Mapping[str, Any]], *, queue: Optional[str],
                   priority: Optional[int], run_at: Optional[datetime.datetime],
                   run_in: Optional[datetime.timedelta], max_attempts: Optional[int],
                   unique_key: Optional[str]) -> Dict[str, Any]:
    """The fields of an `enqueue` request. Raises ValueError or TypeError, before anything
    is sent, for what the service would refuse or misread."""
    if not isinstance(job, str) or not job:
        raise TypeError(f"a job name is a non-empty string, not {job!r}")
    fields: Dict[str, Any] = {"job": job, "args": dict(args) if args is not None else {}}
    if run_at is not None and run_in is not None:
        raise ValueError("give run_at or run_in, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime.datetime):
            raise TypeError(f"run_at is a datetime, not {type(run_at).__name__}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise ValueError(
                f"run_at must be timezone-aware ({run_at.isoformat()} names no zone, and the "
                "service would not guess one): use datetime.now(timezone.utc) or .astimezone()")
        fields["run_at"] = run_at.isoformat()
    if run_in is not None:
        if not isinstance(run_in, datetime.timedelta):
            raise TypeError(f"run_in is a timedelta, not {type(run_in).__name__}")
        if run_in < datetime.timedelta(0):
            raise ValueError(f"run_in must not be negative, not {run_in}")
        # Whole milliseconds, rounded up: never earlier than asked.
        fields["delay_ms"] = -(-run_in // datetime.timedelta(microseconds=1) // 1000)
    for name, value in (("queue", queue), ("unique_key", unique_key)):
        if value is not None:
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} is a non-empty string, not {value!r}")
            fields[name] = value
    for name, value in (("priority", priority), ("max_attempts", max_attempts)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} is an int, not {value!r}")
            fields[name] = value
    return fields


def job_id_of(job: JobRef) -> int:
    """The id of a job given by its id or by what `enqueue` answered."""
    job_id = job.job_id if isinstance(job, EnqueuedJob) else job
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 1:
        raise TypeError(f"a durable job is an EnqueuedJob or a positive int id, not {job!r}")
    return job_id


def result_fields(job: JobRef, wait: Optional[float]) -> Dict[str, Any]:
    """The fields of a `result` request; `wait` in seconds becomes whole milliseconds."""
    fields: Dict[str, Any] = {"job_id": job_id_of(job)}
    if wait is not None:
        fields["wait_ms"] = wait_ms(wait)
    return fields


def wait_ms(wait: float) -> int:
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0 \
            or math.isinf(wait):
        raise ValueError(f"wait is a number of seconds, 0 or more, not {wait!r}")
    return math.ceil(wait * 1000)


def answer_wait(wait: Optional[float], timeout: float) -> float:
    """How long a `result` call waits for its answer: the service holds the answer up to
    `wait`, so the call's own deadline is the wait plus `timeout`, never the timeout alone
    (else a long wait would end in `CallTimeout` while the service is still waiting)."""
    return timeout + (wait or 0.0)


def enqueued(body: Any) -> EnqueuedJob:
    try:
        return EnqueuedJob(job_id=int(body["job_id"]), state=str(body["state"]),
                           duplicate=bool(body["duplicate"]))
    except (TypeError, KeyError, ValueError) as e:
        raise ProtocolError(f"an enqueue answer without {e}: {body!r}") from None


def job_result(body: Any) -> JobResult:
    try:
        return JobResult(
            job_id=int(body["job_id"]), job=body["job"], state=body["state"],
            attempt=int(body["attempt"]), max_attempts=int(body["max_attempts"]),
            queue=body["queue"], run_at=parse_time(body["run_at"]),
            created_at=parse_time(body["created_at"]),
            attempted_at=parse_time(body["attempted_at"]),
            finished_at=parse_time(body["finished_at"]),
            result=body["result"], errors=list(body["errors"] or []))
    except (TypeError, KeyError, ValueError) as e:
        raise ProtocolError(f"a result answer that is not a job ({e!r}): {body!r}") from None


def cancelled(body: Any) -> bool:
    try:
        return bool(body["cancelled"])
    except (TypeError, KeyError) as e:
        raise ProtocolError(f"a cancel answer without {e}: {body!r}") from None


# PostgreSQL's JSON form of a timestamptz: `2024-05-01T12:34:56.1234+00:00`. Fractions of
# any length and offsets of hours only (`+05`) or with seconds occur, which
# `datetime.fromisoformat` before Python 3.11 refuses; this reads every RFC 3339 form too.
_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?)$")


def parse_time(text: Optional[str]) -> Optional[datetime.datetime]:
    """A timezone-aware datetime from the service's time text; None stays None."""
    if text is None:
        return None
    match = _TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a time with a zone: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    if match.group(8):
        zone = datetime.timezone.utc
    else:
        offset = datetime.timedelta(hours=int(match.group(10)),
                                    minutes=int(match.group(11) or 0),
                                    seconds=int(match.group(12) or 0))
        zone = datetime.timezone(-offset if match.group(9) == "-" else offset)
    return datetime.datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
