"""The thread client: `Client`, safe to share between threads and across `fork()`.

Thread safety: **one connection per thread.** Each thread that calls a `Client` gets its own
socket to the service (opened on its first call, closed by `close()` or when the thread's
locals go), so no two threads ever read or write the same socket and no lock is held while
a call waits. A lock around one shared socket would make every thread wait behind the
slowest job in flight (one `sleep` of 10 s would stall them all); the cost of a connection
per thread is a descriptor on each side and one `service.max_clients` slot per thread.
Within a connection answers are still matched by id, since the service may answer
pipelined requests in any order.

Fork safety: each connection remembers the process that opened it. A call in a process
with another PID (a `multiprocessing` child forked after the parent used the client) does
not touch the inherited socket, which the parent is still using; it closes its own copy of
the descriptor (a close writes nothing to the socket) and opens a connection of its own.
The lock of the connection registry is created anew in a forked child, since another
thread of the parent may have held it at the moment of the fork.
"""

from __future__ import annotations

import datetime
import logging
import os
import select
import socket
import threading
import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, cast

from . import durable, protocol
from .durable import DURABLE_WAIT, EnqueuedJob, JobRef, JobResult
from .errors import CallTimeout, ConnectionLost, ProtocolError, Unreachable
from .protocol import Answer, PathLike

__all__ = ["Client"]

_log = logging.getLogger("forkpool")

#: Bytes asked of the socket per read: a 10,000-row answer arrives in a few reads.
_READ_SIZE = 256 * 1024

#: Requests one connection keeps in flight in `run_many` unless told otherwise: enough to
#: keep every worker busy while answers travel back, few enough that answers never pile up.
DEFAULT_PIPELINE = 128

#: Seconds `ping`, `status` and `jobs` wait for their answer by default: the master answers
#: them itself, at once.
ADMIN_WAIT = 10.0

#: Seconds a `run` without a timeout waits for its answer by default: longer than any job
#: file's sensible timeout (the default job timeout is 60 s). The service answers every
#: accepted job; this only bounds a service that is alive but stuck.
DEFAULT_ANSWER_TIMEOUT = 600.0

# A write to a socket whose peer has gone raises EPIPE instead of killing the process with
# SIGPIPE, even in a program that restored SIGPIPE's default action.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


class _Connection:
    """One socket to the service, used by one thread of the process that opened it."""

    def __init__(self, path: str, connect_timeout: float) -> None:
        self._sock: Optional[socket.socket] = None
        self.pid = os.getpid()
        self.path = path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(path)
        except socket.timeout:
            sock.close()
            raise Unreachable(path, f"no connection within {connect_timeout} s") from None
        except OSError as e:
            sock.close()
            raise Unreachable(path, e.strerror or str(e)) from None
        sock.setblocking(False)
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._lines = protocol.LineBuffer()
        self._next_id = 0
        _log.debug("connected to %s (pid %d)", path, self.pid)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Closes this process's descriptor. Never `shutdown()`: in a forked child the socket
        is still the parent's, and a close of one copy writes nothing to it."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __del__(self) -> None:
        self.close()

    def exchange(self, requests: List[bytes], *, pipeline: int, wait: float) -> List[Answer]:
        """Sends `requests` (encoded, without ids), keeping at most `pipeline` in flight, and
        returns their answers in the same order, whatever order they came in.

        `wait` bounds the time without progress: while requests are in flight, some answer
        must come every `wait` seconds, else `CallTimeout`. Raises `protocol.NothingSent`
        when the connection turned out closed before a byte left; `ConnectionLost` when it
        broke after; a `ServiceError` the service sent with `"id": null` (`forbidden`,
        `too_many_clients`). After any exception the connection is closed.
        """
        try:
            return self._exchange(requests, pipeline, wait)
        except BaseException:
            self.close()
            raise

    def _exchange(self, requests: List[bytes], pipeline: int, wait: float) -> List[Answer]:
        sock = self._sock
        if sock is None:
            raise protocol.NothingSent()
        answers: List[Optional[Answer]] = [None] * len(requests)
        in_flight: Dict[int, int] = {}  # request id -> index in `requests`
        out = bytearray()
        next_index = 0
        written = 0
        answered = 0
        deadline = time.monotonic() + wait
        while answered < len(requests):
            while next_index < len(requests) and len(in_flight) < pipeline:
                self._next_id += 1
                in_flight[self._next_id] = next_index
                out += protocol.with_id(self._next_id, requests[next_index])
                next_index += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallTimeout(
                    f"no answer from the service at {self.path} within {wait:g} s "
                    f"({len(in_flight)} request(s) unanswered; their outcome is unknown)",
                    sent=written > 0,
                )
            self._poll.modify(sock, select.POLLIN | (select.POLLOUT if out else 0))
            events = 0
            for _, event in self._poll.poll(left * 1000):
                events |= event
            if events & select.POLLOUT and out:
                try:
                    count = sock.send(out, _SEND_FLAGS)
                except BlockingIOError:
                    count = 0
                except OSError as e:
                    self._read_refusal()
                    if written == 0:
                        raise protocol.NothingSent() from e
                    raise self._lost(f"writing failed ({e.strerror or e})", in_flight) from e
                del out[:count]
                written += count
                if not out:
                    _log.debug("sent %d request(s) to %s", next_index, self.path)
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = sock.recv(_READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if written == 0:
                        raise protocol.NothingSent() from e
                    raise self._lost(f"reading failed ({e.strerror or e})", in_flight) from e
                if not data:
                    if written == 0:
                        raise protocol.NothingSent()
                    raise self._lost("the service closed the connection", in_flight)
                progress = self._take_answers(data, in_flight, answers)
                if progress:
                    answered += progress
                    deadline = time.monotonic() + wait
        return answers  # type: ignore[return-value]  # every slot is filled

    def _take_answers(self, data: bytes, in_flight: Dict[int, int],
                      answers: List[Optional[Answer]]) -> int:
        taken = 0
        for line in self._lines.feed(data):
            try:
                request_id, answer = protocol.decode_answer(line)
            except protocol.ConnectionRefused as refused:
                raise refused.error from None
            index = in_flight.pop(request_id, None) if isinstance(request_id, int) else None
            if index is None:
                raise ProtocolError(
                    f"the service at {self.path} answered id {request_id!r}, which no request "
                    "of this connection is waiting for"
                )
            answers[index] = answer
            taken += 1
        return taken

    def _read_refusal(self) -> None:
        """After a failed write: a service that refused the connection at accept
        (`forbidden`, `too_many_clients`) wrote its reason before closing; raise that."""
        sock = self._sock
        assert sock is not None
        try:
            while True:
                data = sock.recv(_READ_SIZE)
                if not data:
                    return
                for line in self._lines.feed(data):
                    try:
                        protocol.decode_answer(line)
                    except protocol.ConnectionRefused as refused:
                        raise refused.error from None
                    except ProtocolError:
                        return
        except OSError:
            return

    def _lost(self, why: str, in_flight: Dict[int, int]) -> ConnectionLost:
        return ConnectionLost(
            f"lost the connection to the service at {self.path}: {why}; "
            f"{len(in_flight)} request(s) were sent without an answer, so whether they ran is "
            "unknown (they are not sent again)",
            sent=True,
        )


class Client:
    """A client of the forkpool service, for threads and processes.

    `socket` is the service's Unix socket: the argument, else `$FORKPOOL_SOCKET`, else
    `/run/forkpool/forkpool.sock`. `timeout` is every `run`'s default time limit in seconds,
    sent to the service (which cancels and rolls back a job that runs longer, answering
    `Timeout`; it also bounds how long the call waits for its answer, plus a 10 s grace);
    None leaves the job file's own. `answer_timeout` bounds the wait of a call that has no
    timeout. `connect_timeout` bounds opening a connection.

    Share one `Client` freely: between threads (each thread gets its own connection), and
    with `multiprocessing` children (each child process opens its own).
    """

    def __init__(self, socket: Optional[PathLike] = None, *, timeout: Optional[float] = None,
                 connect_timeout: float = 5.0,
                 answer_timeout: float = DEFAULT_ANSWER_TIMEOUT) -> None:
        if timeout is not None:
            protocol.timeout_ms(timeout)  # refuse a bad one now, not at the first call
        self.socket_path = protocol.socket_path(socket)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self._local = threading.local()
        self._connections: "weakref.WeakSet[_Connection]" = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        _clients_to_reset_at_fork.add(self)

    def __repr__(self) -> str:
        return f"forkpool.Client({self.socket_path!r})"

    def __reduce__(self) -> Tuple[Any, ...]:
        # A `spawn` or `forkserver` child gets the settings, never a connection.
        return (_restore, (type(self), self.socket_path, self._settings()))

    def _settings(self) -> Dict[str, Any]:
        return {"timeout": self.timeout, "connect_timeout": self.connect_timeout,
                "answer_timeout": self.answer_timeout}

    # ---- calls -------------------------------------------------------------------------

    def run(self, job: str, args: Optional[Mapping[str, Any]] = None, /, *,
            timeout: Optional[float] = None, **kwargs: Any) -> Dict[str, Any]:
        """Runs `job` with its arguments (a mapping, keywords, or both) and returns the
        result: `{"rows": [...], "rows_affected": [...], "worker", "pid", "elapsed_ms"}` for
        a SQL job, `{"value": ...}` for a Rust handler.

        Raises the `ServiceError` of the answer's kind (`DbError`, `InvalidArgs`, ...). A job
        argument named `timeout` goes in the mapping: the keyword is the call's time limit.
        If the connection breaks after the request left, `ConnectionLost` says so and the
        job is not sent again: it may have run.
        """
        timeout = self.timeout if timeout is None else timeout
        fields = protocol.run_fields(job, args, kwargs, timeout)
        wait = protocol.answer_wait(timeout, self.answer_timeout)
        return cast(Dict[str, Any], protocol.outcome(self._call("run", fields, wait)))

    def run_many(self, calls: Iterable[Any], *, timeout: Optional[float] = None,
                 pipeline: int = DEFAULT_PIPELINE,
                 return_exceptions: bool = False) -> List[Any]:
        """Runs many jobs pipelined on this thread's connection and returns their results
        in the order of `calls` ((job, args) pairs, or job names).

        At most `pipeline` requests are in flight at once. Every job gets its answer before
        this returns; then the first error in order is raised, unless `return_exceptions`
        puts each error in its job's place instead. `timeout` is each job's limit; the call
        gives up (`CallTimeout`) when no answer comes for that long plus the grace.
        A connection that breaks midway raises `ConnectionLost`: jobs already sent may have
        run, and none is sent again.
        """
        timeout = self.timeout if timeout is None else timeout
        requests = protocol.encode_runs(calls, timeout, pipeline)
        if not requests:
            return []
        wait = protocol.answer_wait(timeout, self.answer_timeout)
        answers = self._exchange(requests, pipeline=pipeline, wait=wait, idempotent=False)
        return protocol.outcomes(answers, return_exceptions)

    def ping(self, *, timeout: float = ADMIN_WAIT) -> Dict[str, Any]:
        """`{"pong": True, "pid": <the master's pid>}`."""
        return cast(Dict[str, Any], protocol.outcome(self._call("ping", {}, timeout)))

    def status(self, *, timeout: float = ADMIN_WAIT) -> Dict[str, Any]:
        """Workers, queue, pools and totals, as `forkpool status --json` shows them."""
        return cast(Dict[str, Any], protocol.outcome(self._call("status", {}, timeout)))

    def jobs(self, *, timeout: float = ADMIN_WAIT) -> List[Dict[str, Any]]:
        """The catalog: each job's name, description, database, timeout_ms and params."""
        catalog = protocol.outcome(self._call("jobs", {}, timeout))
        return cast(List[Dict[str, Any]], catalog["jobs"])

    # ---- durable jobs (DESIGN.md §12) ----------------------------------------------------

    def enqueue(self, job: str, args: Optional[Mapping[str, Any]] = None, *,
                queue: Optional[str] = None, priority: Optional[int] = None,
                run_at: Optional[datetime.datetime] = None,
                run_in: Optional[datetime.timedelta] = None,
                max_attempts: Optional[int] = None, unique_key: Optional[str] = None,
                timeout: float = DURABLE_WAIT) -> EnqueuedJob:
        """Stores `job` with its arguments (a mapping) in the queue's database, to run as
        soon as a worker is free, or at `run_at` (a timezone-aware datetime; a naive one is
        a ValueError) or `run_in` (a timedelta, counted by the database's clock). Unset
        options take the job file's defaults. Arguments are checked against the catalog at
        once (`InvalidArgs`, `UnknownJob`: nothing stored).

        A `unique_key` held by an `available` or `running` job returns that job, with
        `duplicate` True. `timeout` bounds the wait for the answer only (the job's own time
        limit is its job file's). Like `run`, an enqueue whose connection broke after it
        was sent is never sent again: `ConnectionLost` (it may have been stored).
        """
        fields = durable.enqueue_fields(job, args, queue=queue, priority=priority,
                                        run_at=run_at, run_in=run_in,
                                        max_attempts=max_attempts, unique_key=unique_key)
        return durable.enqueued(protocol.outcome(self._call("enqueue", fields, timeout)))

    def result(self, job: JobRef, wait: Optional[float] = None, *,
               timeout: float = DURABLE_WAIT) -> JobResult:
        """The durable job (its id, or what `enqueue` returned) as it is now; with `wait`
        (seconds), as soon as it is `completed`, `discarded` or `cancelled`, or as it is
        when `wait` has passed (check `.finished`). The call waits for its answer `wait`
        plus `timeout` seconds, so a long wait never ends in `CallTimeout`. `NotFound`
        when no job has that id. Resent once on a new connection if the old one broke:
        reading a job changes nothing.
        """
        fields = durable.result_fields(job, wait)
        answer = self._call("result", fields, durable.answer_wait(wait, timeout))
        return durable.job_result(protocol.outcome(answer))

    def cancel(self, job: JobRef, *, timeout: float = DURABLE_WAIT) -> bool:
        """Cancels the durable job: True when it was waiting (it is `cancelled` now) or
        running (its query is cancelled and it ends `cancelled`); False when it had
        already finished. `NotFound` when no job has that id. Never sent twice."""
        fields = {"job_id": durable.job_id_of(job)}
        return durable.cancelled(protocol.outcome(self._call("cancel", fields, timeout)))

    def request(self, op: str, *, timeout: float = ADMIN_WAIT, **fields: Any) -> Any:
        """Sends one request of any op with the given fields and returns its result: for
        ops this version has no method for. Never sent twice."""
        return protocol.outcome(self._call(op, fields, timeout, idempotent=False))

    # ---- connections -------------------------------------------------------------------

    def close(self) -> None:
        """Closes every connection this client opened in this process. The client stays
        usable: the next call opens a new one."""
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            connection.close()
        self._local.__dict__.pop("connection", None)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _call(self, op: str, fields: Mapping[str, Any], wait: float,
              idempotent: Optional[bool] = None) -> Answer:
        if idempotent is None:
            idempotent = op in protocol.IDEMPOTENT_OPS
        request = protocol.encode_request(op, fields)
        return self._exchange([request], pipeline=1, wait=wait, idempotent=idempotent)[0]

    def _exchange(self, requests: List[bytes], *, pipeline: int, wait: float,
                  idempotent: bool) -> List[Answer]:
        """`_Connection.exchange` on this thread's connection, opened anew at most once:
        when the old one was found closed before anything was sent (a restarted service, an
        idle connection the service closed), or, for an idempotent op, lost after."""
        for attempt in (1, 2):
            connection = self._connection()
            try:
                return connection.exchange(requests, pipeline=pipeline, wait=wait)
            except (protocol.NothingSent, ConnectionLost) as failure:
                protocol.check_send_again(failure, idempotent=idempotent, last=attempt == 2,
                                          path=self.socket_path)
                _log.debug("sending again on a new connection to %s: %s", self.socket_path,
                           str(failure) or "the old one was closed")
        raise AssertionError("unreachable")

    def _connection(self) -> _Connection:
        """This thread's connection, opened if there is none, or if the one there was
        opened by another process: a forked child must never use its parent's socket."""
        connection: Optional[_Connection] = getattr(self._local, "connection", None)
        if connection is not None and connection.pid == os.getpid() and not connection.closed:
            return connection
        if connection is not None:
            connection.close()  # the parent's socket is only closed here, never written
        connection = _Connection(self.socket_path, self.connect_timeout)
        self._local.connection = connection
        with self._connections_lock:
            self._connections.add(connection)
        return connection

    def _reset_after_fork(self) -> None:
        self._connections_lock = threading.Lock()


def _restore(cls: type, path: str, settings: Dict[str, Any]) -> Any:
    return cls(path, **settings)


_clients_to_reset_at_fork: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _reset_clients_after_fork() -> None:
    for client in list(_clients_to_reset_at_fork):
        client._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_clients_after_fork)
