"""The socket protocol's client side (DESIGN.md §5): request lines out, answer lines in.

Shared by the thread client and the asyncio client; nothing here touches a socket.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import os
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import ConnectionLost, ProtocolError, ServiceError, error_from_answer

#: Where the service listens when installed with its systemd units (README, "Running under
#: systemd"); `FORKPOOL_SOCKET` overrides it, as for the `forkpool` command line.
DEFAULT_SOCKET = "/run/forkpool/forkpool.sock"

#: Seconds a call with a `timeout` waits beyond it for the answer. The service answers a job
#: past its timeout itself at most 5 s later, even when the worker hangs (DESIGN.md §8);
#: the other 5 s are for a loaded machine.
ANSWER_GRACE = 10.0

#: Ops that change nothing, so a request lost with its connection may be sent once more.
#: (`enqueue` stores a job and `cancel` answers differently the second time: neither is.)
IDEMPOTENT_OPS = frozenset({"ping", "status", "jobs", "result"})

PathLike = Union[str, "os.PathLike[str]"]

Answer = Tuple[bool, Any]
"""(ok, body): body is the answer's `result` when ok, else its `error` object."""


def socket_path(explicit: Optional[PathLike] = None) -> str:
    """The socket to use: `explicit`, else `$FORKPOOL_SOCKET`, else `DEFAULT_SOCKET`."""
    if explicit is not None:
        return os.fspath(explicit)
    return os.environ.get("FORKPOOL_SOCKET") or DEFAULT_SOCKET


def _to_json(value: Any) -> Any:
    """The JSON form forkpool's parameter types take (README, "Job files")."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()  # date, timestamp, timestamptz: RFC 3339
    if isinstance(value, decimal.Decimal):
        return str(value)  # numeric takes a decimal string, kept exact
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")  # bytea is base64 in JSON
    raise TypeError(
        f"a job argument of type {type(value).__name__} cannot be sent as JSON "
        "(str, int, float, bool, None, list, dict, datetime, date, Decimal, UUID and bytes can)"
    )


# NaN and infinities are not JSON: the service would refuse the whole line, so they are
# refused here, before anything is sent.
_ENCODER = json.JSONEncoder(default=_to_json, allow_nan=False, ensure_ascii=False,
                            separators=(",", ":"))


def encode_request(op: str, fields: Mapping[str, Any]) -> bytes:
    """A request line without its id: `"op":...,...}\\n`, for `with_id` to complete.

    Requests are encoded before anything is sent, so an argument that cannot be encoded
    fails the call with nothing sent (for `run_many`: none of its jobs).
    """
    text = _ENCODER.encode({"op": op, **fields})
    return text[1:].encode("utf-8") + b"\n"


def with_id(request_id: int, encoded: bytes) -> bytes:
    return b'{"id":%d,' % request_id + encoded


def run_fields(job: str, args: Optional[Mapping[str, Any]], kwargs: Mapping[str, Any],
               timeout: Optional[float]) -> Dict[str, Any]:
    """The fields of a `run` request: the job, its arguments from a mapping and keywords,
    and the timeout in whole milliseconds."""
    if not isinstance(job, str) or not job:
        raise TypeError(f"a job name is a non-empty string, not {job!r}")
    merged: Dict[str, Any] = dict(args) if args is not None else {}
    for name, value in kwargs.items():
        if name in merged:
            raise TypeError(f"argument {name!r} given both in the args mapping and as a keyword")
        merged[name] = value
    fields: Dict[str, Any] = {"job": job, "args": merged}
    if timeout is not None:
        fields["timeout_ms"] = timeout_ms(timeout)
    return fields


def timeout_ms(timeout: float) -> int:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 \
            or math.isinf(timeout):
        raise ValueError(f"a timeout is a positive number of seconds, not {timeout!r}")
    return max(1, math.ceil(timeout * 1000))


def answer_wait(timeout: Optional[float], otherwise: float) -> float:
    """How long a call waits for its answer: its timeout plus the grace, else `otherwise`."""
    return timeout + ANSWER_GRACE if timeout is not None else otherwise


class LineBuffer:
    """Bytes from the socket in, complete lines out."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> List[bytes]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return lines


class NothingSent(Exception):
    """Internal: the connection was found closed before any byte of the request left, so
    the request may go again on a new connection whatever its op."""


def check_send_again(failure: Exception, *, idempotent: bool, last: bool, path: str) -> None:
    """The one rule for a request whose connection failed: returns when it may be sent
    once more on a new connection — it never left, or its op is idempotent — and raises
    otherwise. A `run` that may have reached the service is never sent again."""
    if isinstance(failure, NothingSent):
        if last:
            raise ConnectionLost(f"the service at {path} closed a new connection before the "
                                 "request could be sent", sent=False) from None
        return
    if last or not idempotent:
        raise failure


class ConnectionRefused(Exception):
    """Internal: the service sent an error with `"id": null` — about the connection itself
    (`forbidden`, `too_many_clients` at connect) rather than one request."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(str(error))
        self.error = error


def decode_answer(line: bytes) -> Tuple[Any, Answer]:
    """(id, (ok, body)) of one answer line. Raises ProtocolError for anything else, and
    ConnectionRefused for an error that answers no request (`"id": null`)."""
    try:
        answer = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"the service sent a line that is not JSON ({e}): {line[:200]!r}")
    if not isinstance(answer, dict) or "id" not in answer or not isinstance(answer.get("ok"), bool):
        raise ProtocolError(f"the service sent something that is not an answer: {line[:200]!r}")
    if answer["ok"]:
        return answer["id"], (True, answer.get("result"))
    error = answer.get("error")
    if answer["id"] is None:
        raise ConnectionRefused(error_from_answer(error))
    return answer["id"], (False, error)


def outcome(answer: Answer) -> Any:
    """The answer's result, or its error raised."""
    ok, body = answer
    if ok:
        return body
    raise error_from_answer(body)


def outcomes(answers: List[Answer], return_exceptions: bool) -> List[Any]:
    """`run_many`'s list: results in request order, errors as exceptions in place; unless
    `return_exceptions`, the first error is raised (once every job has its answer)."""
    results = [body if ok else error_from_answer(body) for ok, body in answers]
    if not return_exceptions:
        for result in results:
            if isinstance(result, BaseException):
                raise result
    return results


def encode_runs(calls: Any, timeout: Optional[float], pipeline: int) -> List[bytes]:
    """`run_many`'s requests, every one encoded before the first is sent. `calls` are
    (job, args) pairs, or bare job names."""
    if pipeline < 1:
        raise ValueError(f"pipeline is at least 1, not {pipeline}")
    requests = []
    for call in calls:
        job, args = (call, None) if isinstance(call, str) else call
        requests.append(encode_request("run", run_fields(job, args, {}, timeout)))
    return requests
