"""The asyncio client: `AsyncClient`, the same methods as `Client`, awaited.

One connection per event loop, shared by every task of that loop: each request carries its
own id, a reader task hands each answer to the future waiting for that id, and a line is
written whole before the writing task can be suspended, so concurrent calls never cross.
As with `Client`, a connection opened by another process (the client was inherited across
`fork()`) is never used: the child opens its own.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, cast

from . import durable, protocol
from .client import ADMIN_WAIT, DEFAULT_ANSWER_TIMEOUT, DEFAULT_PIPELINE, _restore
from .durable import DURABLE_WAIT, EnqueuedJob, JobRef, JobResult
from .errors import (CallTimeout, ConnectionLost, ForkpoolError, ProtocolError, Unreachable,
                     error_from_answer)
from .protocol import Answer, PathLike

__all__ = ["AsyncClient"]

_log = logging.getLogger("forkpool")

_READ_SIZE = 256 * 1024


class _AsyncConnection:
    """One socket to the service for the tasks of one event loop in one process."""

    def __init__(self, path: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.pid = os.getpid()
        self.path = path
        self.closed = False
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: Dict[int, "asyncio.Future[Answer]"] = {}
        # Ids whose caller stopped waiting (timeout, cancellation): their late answers are
        # dropped, where an id nobody sent is a protocol error.
        self._abandoned: Set[int] = set()
        self._read_task = asyncio.get_running_loop().create_task(self._read_answers())

    @classmethod
    async def open(cls, path: str, connect_timeout: float) -> "_AsyncConnection":
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path), connect_timeout)
        except asyncio.TimeoutError:
            raise Unreachable(path, f"no connection within {connect_timeout} s") from None
        except OSError as e:
            raise Unreachable(path, e.strerror or str(e)) from None
        _log.debug("connected to %s (pid %d, asyncio)", path, os.getpid())
        return cls(path, reader, writer)

    async def request(self, encoded: bytes, wait: float) -> Answer:
        """Sends one request and waits for its answer. Raises `protocol.NothingSent` if the
        connection was already known closed, so nothing left."""
        transport = self._writer.transport
        if self.closed or transport.is_closing():
            raise protocol.NothingSent()
        self._next_id += 1
        request_id = self._next_id
        idle = transport.get_write_buffer_size() == 0
        self._writer.write(protocol.with_id(request_id, encoded))
        if idle and transport.is_closing():
            # With nothing queued before it, the line went straight to send(), which failed:
            # the service had closed the connection, and nothing of the line left.
            self.closed = True
            raise protocol.NothingSent()
        answer: "asyncio.Future[Answer]" = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            try:
                await self._writer.drain()  # waits only while the socket's buffer is full
            except OSError:
                pass  # the reader sees the same break and fails `answer` with ConnectionLost
            return await asyncio.wait_for(asyncio.shield(answer), wait)
        except asyncio.TimeoutError:
            raise CallTimeout(
                f"no answer from the service at {self.path} within {wait:g} s; the outcome "
                "of the request is unknown", sent=True) from None
        finally:
            if self._waiting.pop(request_id, None) is not None:
                self._abandoned.add(request_id)

    async def _read_answers(self) -> None:
        lines = protocol.LineBuffer()
        failure: Callable[[], ForkpoolError]
        try:
            while True:
                data = await self._reader.read(_READ_SIZE)
                if not data:
                    failure = self._lost("the service closed the connection")
                    break
                for line in lines.feed(data):
                    self._deliver(line)
        except protocol.ConnectionRefused as refused:
            error = refused.error.error
            failure = lambda: error_from_answer(error)  # noqa: E731
        except ProtocolError as e:
            message = str(e)
            failure = lambda: ProtocolError(message)  # noqa: E731
        except OSError as e:
            failure = self._lost(f"reading failed ({e.strerror or e})")
        except asyncio.CancelledError:
            failure = self._lost("the client was closed")
        except Exception as e:  # a bug here must not leave callers waiting for ever
            message = f"reading answers failed: {e!r}"
            failure = lambda: ProtocolError(message)  # noqa: E731
        self._fail_waiting(failure)

    def _deliver(self, line: bytes) -> None:
        request_id, answer = protocol.decode_answer(line)
        future = self._waiting.get(request_id) if isinstance(request_id, int) else None
        if future is not None:
            if not future.done():
                future.set_result(answer)
        elif request_id in self._abandoned:
            self._abandoned.discard(request_id)
        else:
            raise ProtocolError(
                f"the service at {self.path} answered id {request_id!r}, which no request of "
                "this connection is waiting for")

    def _lost(self, why: str) -> Callable[[], ForkpoolError]:
        def make() -> ForkpoolError:
            return ConnectionLost(
                f"lost the connection to the service at {self.path}: {why}; the request was "
                "sent without an answer, so whether it ran is unknown (it is not sent again)",
                sent=True)
        return make

    def _fail_waiting(self, failure: Callable[[], ForkpoolError]) -> None:
        """Every request still waiting gets its own instance of the failure."""
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(failure())
        self._writer.close()

    async def close(self) -> None:
        self.closed = True
        self._read_task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass


class AsyncClient:
    """The asyncio twin of `Client`: the same arguments, the same methods, awaited.

    One connection per event loop (in each process), opened on the loop's first call and
    shared by all its tasks; answers are matched to requests by id. `await client.close()`,
    or `async with`, closes the running loop's connection.
    """

    def __init__(self, socket: Optional[PathLike] = None, *, timeout: Optional[float] = None,
                 connect_timeout: float = 5.0,
                 answer_timeout: float = DEFAULT_ANSWER_TIMEOUT) -> None:
        if timeout is not None:
            protocol.timeout_ms(timeout)
        self.socket_path = protocol.socket_path(socket)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        # A connection belongs to the loop whose transport it uses; a loop that is gone
        # takes its entry with it.
        self._connections: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Opening]" = \
            weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"forkpool.AsyncClient({self.socket_path!r})"

    def __reduce__(self) -> Tuple[Any, ...]:
        return (_restore, (type(self), self.socket_path,
                           {"timeout": self.timeout, "connect_timeout": self.connect_timeout,
                            "answer_timeout": self.answer_timeout}))

    async def run(self, job: str, args: Optional[Mapping[str, Any]] = None, /, *,
                  timeout: Optional[float] = None, **kwargs: Any) -> Dict[str, Any]:
        """As `Client.run`."""
        timeout = self.timeout if timeout is None else timeout
        fields = protocol.run_fields(job, args, kwargs, timeout)
        wait = protocol.answer_wait(timeout, self.answer_timeout)
        return cast(Dict[str, Any], protocol.outcome(await self._call("run", fields, wait)))

    async def run_many(self, calls: Iterable[Any], *, timeout: Optional[float] = None,
                       pipeline: int = DEFAULT_PIPELINE,
                       return_exceptions: bool = False) -> List[Any]:
        """As `Client.run_many`: at most `pipeline` jobs in flight, results in order."""
        timeout = self.timeout if timeout is None else timeout
        requests = protocol.encode_runs(calls, timeout, pipeline)
        wait = protocol.answer_wait(timeout, self.answer_timeout)
        slots = asyncio.Semaphore(pipeline)

        async def one(request: bytes) -> Answer:
            async with slots:
                return await self._send(request, wait, idempotent=False)

        answers = await asyncio.gather(*(one(request) for request in requests),
                                       return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):  # the connection broke or timed out
                raise answer
        return protocol.outcomes(answers, return_exceptions)  # type: ignore[arg-type]

    async def ping(self, *, timeout: float = ADMIN_WAIT) -> Dict[str, Any]:
        """As `Client.ping`."""
        return cast(Dict[str, Any], protocol.outcome(await self._call("ping", {}, timeout)))

    async def status(self, *, timeout: float = ADMIN_WAIT) -> Dict[str, Any]:
        """As `Client.status`."""
        return cast(Dict[str, Any], protocol.outcome(await self._call("status", {}, timeout)))

    async def jobs(self, *, timeout: float = ADMIN_WAIT) -> List[Dict[str, Any]]:
        """As `Client.jobs`."""
        catalog = protocol.outcome(await self._call("jobs", {}, timeout))
        return cast(List[Dict[str, Any]], catalog["jobs"])

    async def enqueue(self, job: str, args: Optional[Mapping[str, Any]] = None, *,
                      queue: Optional[str] = None, priority: Optional[int] = None,
                      run_at: Optional[datetime.datetime] = None,
                      run_in: Optional[datetime.timedelta] = None,
                      max_attempts: Optional[int] = None, unique_key: Optional[str] = None,
                      timeout: float = DURABLE_WAIT) -> EnqueuedJob:
        """As `Client.enqueue`: never sent twice."""
        fields = durable.enqueue_fields(job, args, queue=queue, priority=priority,
                                        run_at=run_at, run_in=run_in,
                                        max_attempts=max_attempts, unique_key=unique_key)
        return durable.enqueued(protocol.outcome(await self._call("enqueue", fields, timeout)))

    async def result(self, job: JobRef, wait: Optional[float] = None, *,
                     timeout: float = DURABLE_WAIT) -> JobResult:
        """As `Client.result`: the call waits `wait` plus `timeout`; resent once."""
        fields = durable.result_fields(job, wait)
        answer = await self._call("result", fields, durable.answer_wait(wait, timeout))
        return durable.job_result(protocol.outcome(answer))

    async def cancel(self, job: JobRef, *, timeout: float = DURABLE_WAIT) -> bool:
        """As `Client.cancel`."""
        fields = {"job_id": durable.job_id_of(job)}
        return durable.cancelled(protocol.outcome(await self._call("cancel", fields, timeout)))

    async def request(self, op: str, *, timeout: float = ADMIN_WAIT, **fields: Any) -> Any:
        """As `Client.request`."""
        return protocol.outcome(await self._call(op, fields, timeout, idempotent=False))

    async def close(self) -> None:
        """Closes the running loop's connection; the next call opens a new one."""
        opening = self._connections.pop(asyncio.get_running_loop(), None)
        if opening is not None and opening.pid == os.getpid() and opening.task.done() \
                and not opening.task.cancelled() and opening.task.exception() is None:
            await opening.task.result().close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def _call(self, op: str, fields: Mapping[str, Any], wait: float,
                    idempotent: Optional[bool] = None) -> Answer:
        if idempotent is None:
            idempotent = op in protocol.IDEMPOTENT_OPS
        return await self._send(protocol.encode_request(op, fields), wait, idempotent)

    async def _send(self, request: bytes, wait: float, idempotent: bool) -> Answer:
        """One request on the loop's connection, opened anew at most once, as `Client`
        does: when it was known closed before the request left, or for an idempotent op."""
        for attempt in (1, 2):
            connection = await self._connection()
            try:
                return await connection.request(request, wait)
            except (protocol.NothingSent, ConnectionLost) as failure:
                protocol.check_send_again(failure, idempotent=idempotent, last=attempt == 2,
                                          path=self.socket_path)
        raise AssertionError("unreachable")

    async def _connection(self) -> _AsyncConnection:
        """The running loop's connection. Opened once however many tasks ask at the same
        moment; opened again when the last one closed, failed to open, or belongs to the
        parent of this (forked) process."""
        loop = asyncio.get_running_loop()
        opening = self._connections.get(loop)
        if opening is None or not opening.usable():
            opening = _Opening(loop.create_task(
                _AsyncConnection.open(self.socket_path, self.connect_timeout)))
            self._connections[loop] = opening
        # Shielded: a caller cancelled while the connection opens does not cancel the open
        # the other callers await.
        return await asyncio.shield(opening.task)


class _Opening:
    """A connection being opened (or open), and the process it belongs to."""

    def __init__(self, task: "asyncio.Task[_AsyncConnection]") -> None:
        self.task = task
        self.pid = os.getpid()

    def usable(self) -> bool:
        if self.pid != os.getpid():
            return False
        if not self.task.done():
            return True
        if self.task.cancelled() or self.task.exception() is not None:
            return False
        return not self.task.result().closed
