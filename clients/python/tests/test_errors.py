"""Every error kind of the protocol as its exception: the mapping of each kind, and each
kind the stock service can be made to answer, provoked for real."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import forkpool
from forkpool.errors import error_from_answer
from harness import free_port, wait_until

# DESIGN.md §5's closed set, with `not_found` of the durable jobs and `invalid_config` of reload.
KINDS = {
    "bad_request": forkpool.BadRequest,
    "too_large": forkpool.TooLarge,
    "unknown_op": forkpool.UnknownOp,
    "unknown_job": forkpool.UnknownJob,
    "invalid_args": forkpool.InvalidArgs,
    "queue_full": forkpool.QueueFull,
    "timeout": forkpool.Timeout,
    "worker_lost": forkpool.WorkerLost,
    "db_error": forkpool.DbError,
    "db_unavailable": forkpool.DbUnavailable,
    "job_failed": forkpool.JobFailed,
    "shutting_down": forkpool.ShuttingDown,
    "forbidden": forkpool.Forbidden,
    "too_many_clients": forkpool.TooManyClients,
    "internal": forkpool.Internal,
    "not_found": forkpool.NotFound,
    "invalid_config": forkpool.InvalidConfig,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_is_its_own_class_under_one_base_carrying_the_message(kind):
    error = error_from_answer({"kind": kind, "message": "what the service said"})
    assert type(error) is KINDS[kind]
    assert isinstance(error, forkpool.ServiceError) and isinstance(error, forkpool.ForkpoolError)
    assert error.kind == kind
    assert error.message == "what the service said"
    assert str(error).startswith(f"{kind}: what the service said")


def test_every_kind_class_is_distinct():
    assert len(set(KINDS.values())) == len(KINDS)


def test_an_unknown_kind_is_the_base_service_error_keeping_the_kind():
    error = error_from_answer({"kind": "retry_later", "message": "m", "after_ms": 5})
    assert type(error) is forkpool.ServiceError
    assert error.kind == "retry_later"
    assert error.error["after_ms"] == 5


def test_a_db_error_carries_sqlstate_detail_and_hint():
    error = error_from_answer({"kind": "db_error", "message": "duplicate key",
                               "sqlstate": "23505", "detail": "Key (id)=(1) exists.",
                               "hint": None})
    assert (error.sqlstate, error.detail, error.hint) == ("23505", "Key (id)=(1) exists.", None)
    assert "SQLSTATE 23505" in str(error)


# ---- provoked on the real service -----------------------------------------------------

def test_bad_request_names_the_unknown_field(fp):
    with pytest.raises(forkpool.BadRequest, match="arg"):
        fp.request("run", job="add", arg={"a": 1})


def test_unknown_op(fp):
    with pytest.raises(forkpool.UnknownOp, match="explode"):
        fp.request("explode")


def test_unknown_job_lists_the_jobs(fp):
    with pytest.raises(forkpool.UnknownJob, match="add"):
        fp.run("no_such_job")


def test_invalid_args_names_the_argument(fp):
    with pytest.raises(forkpool.InvalidArgs, match="`a`|a"):
        fp.run("add", a="not a number")


def test_db_error_has_the_sqlstate(fp):
    with pytest.raises(forkpool.DbError) as raised:
        fp.run("divide", a=1, b=0)
    assert raised.value.sqlstate == "22012"
    assert "division by zero" in raised.value.message


def test_timeout_is_answered_when_the_job_outruns_the_call_timeout(fp):
    started = time.monotonic()
    with pytest.raises(forkpool.Timeout):
        fp.run("sleep", seconds=10, timeout=0.3)
    assert time.monotonic() - started < 5


def test_too_large_closes_the_connection_and_the_next_call_opens_another(start_service):
    service = start_service(service_keys={"max_request_bytes": "1024"})
    with forkpool.Client(service.socket) as fp:
        with pytest.raises(forkpool.TooLarge):
            fp.run("add_item", parent_id=1, name="x" * 4000)
        assert fp.run("add", a=1)["rows"] == [{"sum": 2}]


def test_queue_full_when_the_queue_holds_queue_limit_jobs(start_service):
    service = start_service(workers=1, service_keys={"queue_limit": "1"})
    with forkpool.Client(service.socket) as fp:
        results = fp.run_many([("sleep", {"seconds": 0.2})] * 4, return_exceptions=True)
    refused = [r for r in results if isinstance(r, forkpool.QueueFull)]
    assert refused, results
    assert all(isinstance(r, (dict, forkpool.QueueFull)) for r in results), results
    assert "queue_limit" in refused[0].message


def run_in_thread(call):
    """Starts `call` on a thread; the returned function gives its result or exception."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the test
            outcome["value"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout=30):
        thread.join(timeout)
        assert not thread.is_alive(), "the call did not return"
        return outcome["value"]

    return join


def busy_worker_pid(fp):
    """The pid of a worker running a job, from `status` (the service announces no event
    when a job starts)."""
    def busy():
        for worker in fp.status()["workers"]:
            if worker.get("current"):
                return worker["pid"]
        return None
    return wait_until("a worker runs the job", busy)


def test_worker_lost_when_the_worker_dies_mid_job(start_service):
    service = start_service(workers=1)
    with forkpool.Client(service.socket) as fp:
        result = run_in_thread(lambda: fp.run("sleep", seconds=20))
        os.kill(busy_worker_pid(fp), signal.SIGKILL)
        lost = result()
    assert isinstance(lost, forkpool.WorkerLost), lost
    assert "SIGKILL" in lost.message


def test_shutting_down_answers_a_job_in_flight_at_a_fast_stop(start_service):
    service = start_service(workers=1)
    with forkpool.Client(service.socket) as fp:
        result = run_in_thread(lambda: fp.run("sleep", seconds=20))
        busy_worker_pid(fp)
        service.signal(signal.SIGINT)
        stopped = result()
    assert isinstance(stopped, forkpool.ShuttingDown), stopped
    assert service.wait_exit() == 0


def test_db_unavailable_when_no_connection_can_be_had(start_service):
    nobody_listens = (f"host=127.0.0.1 port={free_port()} user=app dbname=app "
                      "sslmode=disable connect_timeout=1")
    service = start_service(database_url=nobody_listens,
                            database_keys={"checkout_timeout": '"300ms"'})
    with forkpool.Client(service.socket) as fp:
        with pytest.raises(forkpool.DbUnavailable):
            fp.run("add", a=1)


def test_too_many_clients_past_max_clients(start_service):
    service = start_service(service_keys={"max_clients": "1"})
    with forkpool.Client(service.socket) as first, forkpool.Client(service.socket) as second:
        first.ping()
        with pytest.raises(forkpool.TooManyClients, match="max_clients"):
            second.ping()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_forbidden_for_a_uid_that_is_not_allowed(start_service):
    service = start_service(service_keys={"allowed_uids": "[4242]", "socket_mode": '"0666"'})
    for directory in (service.dir, service.dir / "config"):
        os.chmod(directory, 0o755)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # as nobody: neither uid nor gid is allowed
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            forkpool.Client(service.socket).ping()
            report = "no error"
        except BaseException as e:
            report = f"{type(e).__name__}|{e}"
        os.write(write_end, report.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(child, 0)
    name, _, message = report.partition("|")
    assert name == "Forbidden", report
    assert "allowed_uids" in message
