"""Durable jobs (DESIGN.md §12): enqueue, result and cancel against a service with durable
jobs on, from one thread, from asyncio, and from forked children sharing one client."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

import forkpool
from test_fork_threads import in_forked_children

DEADLINE = 60.0
CHILDREN = 8
PER_CHILD = 100


@pytest.fixture
def dfp(durable_service):
    client = forkpool.Client(durable_service.socket)
    yield client
    client.close()


def test_an_enqueued_job_completes_and_its_result_has_the_rows(dfp):
    job = dfp.enqueue("add", {"a": 40, "b": 2})
    assert isinstance(job, forkpool.EnqueuedJob)
    assert job.job_id > 0 and job.state == "available" and job.duplicate is False
    done = dfp.result(job, wait=DEADLINE)
    assert isinstance(done, forkpool.JobResult)
    assert (done.job_id, done.job, done.state, done.finished) == (job.job_id, "add", "completed",
                                                                  True)
    assert done.result is not None and done.result["rows"] == [{"sum": 42}]
    assert done.rows == [{"sum": 42}]
    assert (done.attempt, done.queue, done.errors) == (1, "default", [])
    assert done.max_attempts >= 1
    for moment in (done.run_at, done.created_at, done.attempted_at, done.finished_at):
        assert isinstance(moment, datetime) and moment.tzinfo is not None
    assert done.created_at <= done.attempted_at <= done.finished_at
    # By its id too, without waiting: the same row.
    assert dfp.result(job.job_id) == done


def test_run_in_schedules_the_job_and_cancel_ends_it(dfp):
    job = dfp.enqueue("add", {"a": 1}, run_in=timedelta(hours=1))
    waiting = dfp.result(job)
    assert waiting.state == "available" and not waiting.finished
    assert waiting.run_at > datetime.now(timezone.utc) + timedelta(minutes=59)
    ahead = waiting.run_at - waiting.created_at
    assert timedelta(minutes=59) < ahead <= timedelta(hours=1, seconds=1)
    assert (waiting.attempted_at, waiting.finished_at, waiting.result) == (None, None, None)
    assert dfp.cancel(job) is True
    cancelled = dfp.result(job.job_id)
    assert cancelled.state == "cancelled" and cancelled.finished
    assert cancelled.finished_at is not None
    assert dfp.cancel(job.job_id) is False  # already finished: left as it is


def test_run_at_is_kept_to_the_microsecond_in_any_zone(dfp):
    zone = timezone(timedelta(hours=5, minutes=30))
    at = (datetime.now(timezone.utc) + timedelta(days=1)).astimezone(zone)
    job = dfp.enqueue("add", {"a": 1}, run_at=at, priority=3, max_attempts=2, queue="later")
    scheduled = dfp.result(job)
    assert scheduled.run_at == at
    assert (scheduled.state, scheduled.max_attempts, scheduled.queue) == ("available", 2, "later")
    assert dfp.cancel(job) is True


def test_a_wait_longer_than_the_calls_timeout_still_gets_its_answer(dfp):
    job = dfp.enqueue("add", {"a": 1}, run_in=timedelta(hours=1))
    started = time.monotonic()
    # The call's own deadline is wait + timeout, so the service's answer at 1.5 s arrives.
    still = dfp.result(job, wait=1.5, timeout=0.5)
    assert time.monotonic() - started >= 1.4
    assert still.state == "available" and not still.finished
    assert dfp.cancel(job) is True


def test_a_unique_key_held_by_a_waiting_job_returns_that_job(dfp):
    key = f"once-{uuid.uuid4()}"
    first = dfp.enqueue("add", {"a": 1}, run_in=timedelta(hours=1), unique_key=key)
    again = dfp.enqueue("add", {"a": 2}, run_in=timedelta(hours=1), unique_key=key)
    assert first.duplicate is False
    assert again.job_id == first.job_id and again.duplicate is True
    assert dfp.cancel(first) is True
    # Once the holder is cancelled, the key is free again.
    third = dfp.enqueue("add", {"a": 3}, run_in=timedelta(hours=1), unique_key=key)
    assert third.job_id != first.job_id and third.duplicate is False
    assert dfp.cancel(third) is True


def test_a_failing_job_is_discarded_with_its_errors(dfp):
    job = dfp.enqueue("divide", {"a": 1, "b": 0}, max_attempts=1)
    failed = dfp.result(job, wait=DEADLINE)
    assert (failed.state, failed.attempt, failed.result) == ("discarded", 1, None)
    assert [(e["attempt"], e["kind"], e.get("sqlstate")) for e in failed.errors] == \
        [(1, "db_error", "22012")]


def test_unknown_ids_are_not_found(dfp):
    with pytest.raises(forkpool.NotFound) as raised:
        dfp.result(2**62)
    assert raised.value.kind == "not_found"
    with pytest.raises(forkpool.NotFound):
        dfp.cancel(2**62)
    assert dfp.ping()["pong"] is True  # the connection serves on


def test_what_the_service_would_refuse_is_refused_before_sending(dfp):
    naive = datetime.now() + timedelta(hours=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        dfp.enqueue("add", {"a": 1}, run_at=naive)
    with pytest.raises(ValueError, match="not both"):
        dfp.enqueue("add", {"a": 1}, run_at=datetime.now(timezone.utc), run_in=timedelta(1))
    with pytest.raises(ValueError):
        dfp.enqueue("add", {"a": 1}, run_in=timedelta(seconds=-1))
    with pytest.raises(ValueError):
        dfp.result(1, wait=-1)
    with pytest.raises(TypeError):
        dfp.result(True)
    with pytest.raises(TypeError):
        dfp.cancel("1")


def test_arguments_are_checked_at_enqueue_and_nothing_is_stored(dfp):
    with pytest.raises(forkpool.InvalidArgs):
        dfp.enqueue("add", {"a": "x"})
    with pytest.raises(forkpool.UnknownJob):
        dfp.enqueue("no_such_job")


def test_with_durable_jobs_off_the_durable_ops_are_bad_requests(fp):
    with pytest.raises(forkpool.BadRequest):
        fp.enqueue("add", {"a": 1})
    with pytest.raises(forkpool.BadRequest):
        fp.result(1)
    with pytest.raises(forkpool.BadRequest):
        fp.cancel(1)


def test_the_asyncio_twin(durable_service):
    async def main():
        async with forkpool.AsyncClient(durable_service.socket) as fp:
            jobs = await asyncio.gather(*(fp.enqueue("add", {"a": i, "b": 1}) for i in range(50)))
            assert len({job.job_id for job in jobs}) == 50
            done = await asyncio.gather(*(fp.result(job, wait=DEADLINE) for job in jobs))
            assert [r.state for r in done] == ["completed"] * 50
            assert [r.rows for r in done] == [[{"sum": i + 1}] for i in range(50)]
            later = await fp.enqueue("add", {"a": 1}, run_in=timedelta(hours=1))
            assert (await fp.result(later.job_id)).state == "available"
            assert await fp.cancel(later) is True
            assert (await fp.result(later)).state == "cancelled"
            with pytest.raises(forkpool.NotFound):
                await fp.result(2**62)
            with pytest.raises(ValueError):
                await fp.enqueue("add", run_at=datetime.now())

    asyncio.run(asyncio.wait_for(main(), DEADLINE))


def enqueue_in_child(fp, child, start, answers):
    """In a forked child: enqueues on the parent's client; sends back the ids (or the
    error)."""
    start.wait(DEADLINE)
    try:
        ids = [fp.enqueue("add", {"a": child * 1000 + i, "b": 0}).job_id
               for i in range(PER_CHILD)]
        answers.put((child, ids))
    except forkpool.ForkpoolError as e:
        answers.put((child, repr(e)))


def test_eight_forked_children_enqueue_through_the_parents_client(durable_service):
    fp = forkpool.Client(durable_service.socket)
    assert fp.ping()["pid"] == durable_service.pid  # the parent holds an open connection
    received = in_forked_children(enqueue_in_child, fp, CHILDREN)
    for child in range(CHILDREN):
        assert isinstance(received[child], list), f"child {child}: {received[child]}"
        assert len(received[child]) == PER_CHILD
    every_id = [job_id for child in range(CHILDREN) for job_id in received[child]]
    assert len(set(every_id)) == CHILDREN * PER_CHILD
    # Every job completed with its own arguments, read through the parent's connection.
    for child in range(CHILDREN):
        for i, job_id in enumerate(received[child]):
            done = fp.result(job_id, wait=DEADLINE)
            assert (done.state, done.rows) == ("completed", [{"sum": child * 1000 + i}]), done
    fp.close()
