"""Connections: unreachable, timed out, closed by the service, lost mid-call — and which
requests the client sends again (idempotent ones, or ones that never left) and which never."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

import forkpool
from conftest import DURABLE_QUEUE
from harness import toml_string
from test_errors import run_in_thread

DEADLINE = 60.0


def test_an_unreachable_socket_is_its_own_error_naming_the_path():
    fp = forkpool.Client("/nonexistent/forkpool.sock", connect_timeout=1)
    with pytest.raises(forkpool.Unreachable) as raised:
        fp.ping()
    assert raised.value.path == "/nonexistent/forkpool.sock"
    assert "/nonexistent/forkpool.sock" in str(raised.value)
    with pytest.raises(forkpool.Unreachable):
        fp.run("add", a=1)


def test_a_call_without_an_answer_in_time_is_a_call_timeout(start_service):
    service = start_service(workers=1)
    fp = forkpool.Client(service.socket)
    fp.ping()
    service.signal(signal.SIGSTOP)  # alive, connected, silent
    try:
        started = time.monotonic()
        with pytest.raises(forkpool.CallTimeout) as raised:
            fp.ping(timeout=0.3)
        assert time.monotonic() - started < 3
        assert raised.value.sent is True
    finally:
        service.signal(signal.SIGCONT)
    assert fp.ping()["pid"] == service.pid  # on a new connection
    fp.close()


@pytest.fixture
def shared_socket_dir():
    """A directory for a socket path that outlives one service."""
    path = Path(tempfile.mkdtemp(prefix="fp-py-sock-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_run_after_the_service_restarted_goes_to_the_new_service_once(
        start_service, shared_socket_dir):
    socket_path = str(shared_socket_dir / "forkpool.sock")
    keys = {"socket": toml_string(socket_path)}
    first = start_service(service_keys=keys)
    fp = forkpool.Client(socket_path, timeout=20)
    assert fp.run("add", a=1)["rows"] == [{"sum": 2}]
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    second = start_service(service_keys=keys)
    # The old connection is closed; the request never left on it, so it goes on a new one.
    assert fp.run("add", a=2)["rows"] == [{"sum": 3}]
    assert fp.status()["pid"] == second.pid
    assert fp.status()["totals"]["accepted"] == 1
    fp.close()


class SentEvent(logging.Handler):
    """Set when the client logs that its request left (at debug, logger `forkpool`)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.sent = threading.Event()

    def emit(self, record):
        if record.getMessage().startswith("sent "):
            self.sent.set()


@pytest.fixture
def sent_event():
    logger = logging.getLogger("forkpool")
    handler = SentEvent()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler.sent
    logger.removeHandler(handler)
    logger.setLevel(level)


def lose_connection_after_sending(start_service, shared_socket_dir, sent_event, call,
                                  durable=False):
    """Sends `call` to a stopped service through a symlinked socket path, points the link at
    a second service, then kills the first: the connection breaks after the request left.
    Returns (what the call returned or raised, the second service, a client of it). With
    `durable`, both services have durable jobs on."""
    options = {"queue_keys": DURABLE_QUEUE} if durable else {}
    old, new = start_service(workers=1, **options), start_service(workers=1, **options)
    if durable:
        old.wait_durable_ready()
        new.wait_durable_ready()
    link = shared_socket_dir / "forkpool.sock"
    os.symlink(old.socket, link)
    fp = forkpool.Client(str(link), timeout=20)
    assert fp.ping()["pid"] == old.pid
    sent_event.clear()  # the ping's
    old.signal(signal.SIGSTOP)
    outcome = run_in_thread(lambda: call(fp))
    assert sent_event.wait(10), "the request was not sent"
    os.symlink(new.socket, shared_socket_dir / "next")
    os.replace(shared_socket_dir / "next", link)
    old.signal(signal.SIGKILL)
    return outcome(), new, forkpool.Client(new.socket)


def test_an_idempotent_call_lost_after_sending_is_sent_once_more(
        start_service, shared_socket_dir, sent_event):
    answer, new, _ = lose_connection_after_sending(
        start_service, shared_socket_dir, sent_event, lambda fp: fp.status())
    assert not isinstance(answer, BaseException), answer
    assert answer["pid"] == new.pid


def test_a_run_lost_after_sending_is_reported_and_never_sent_again(
        start_service, shared_socket_dir, sent_event):
    lost, new, observer = lose_connection_after_sending(
        start_service, shared_socket_dir, sent_event, lambda fp: fp.run("add", a=1))
    assert isinstance(lost, forkpool.ConnectionLost), lost
    assert lost.sent is True
    assert observer.status()["totals"]["accepted"] == 0
    observer.close()


def test_run_many_lost_midway_is_reported_and_never_sent_again(
        start_service, shared_socket_dir, sent_event):
    lost, new, observer = lose_connection_after_sending(
        start_service, shared_socket_dir, sent_event,
        lambda fp: fp.run_many([("add", {"a": i}) for i in range(50)]))
    assert isinstance(lost, forkpool.ConnectionLost), lost
    assert observer.status()["totals"]["accepted"] == 0
    observer.close()


def test_a_result_lost_after_sending_is_sent_once_more(
        durable_service, start_service, shared_socket_dir, sent_event):
    job = forkpool.Client(durable_service.socket).enqueue("add", {"a": 41})
    answer, _, _ = lose_connection_after_sending(
        start_service, shared_socket_dir, sent_event,
        lambda fp: fp.result(job, wait=DEADLINE), durable=True)
    assert not isinstance(answer, BaseException), answer
    assert (answer.job_id, answer.state, answer.rows) == (job.job_id, "completed", [{"sum": 42}])


def test_an_enqueue_lost_after_sending_is_reported_and_never_sent_again(
        cluster, start_service, shared_socket_dir, sent_event):
    key = f"lost-{uuid.uuid4()}"
    lost, _, observer = lose_connection_after_sending(
        start_service, shared_socket_dir, sent_event,
        lambda fp: fp.enqueue("add", {"a": 1}, unique_key=key), durable=True)
    assert isinstance(lost, forkpool.ConnectionLost), lost
    assert lost.sent is True
    assert cluster.psql(f"SELECT count(*) FROM forkpool.jobs WHERE unique_key = '{key}'") == "0"
    observer.close()
