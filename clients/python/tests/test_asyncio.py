"""The asyncio client: the same methods, one connection per loop shared by every task."""

from __future__ import annotations

import asyncio

import pytest

import forkpool

DEADLINE = 60.0


def run(coroutine):
    """Runs a test's coroutine on a fresh loop, bounded: a hang fails the test."""
    return asyncio.run(asyncio.wait_for(coroutine, DEADLINE))


def test_gather_of_a_thousand_calls_gets_every_answer_right(service):
    async def main():
        async with forkpool.AsyncClient(service.socket, timeout=20) as fp:
            return await asyncio.gather(*(fp.run("add", a=i, b=1) for i in range(1000)))

    results = run(main())
    assert [r["rows"][0]["sum"] for r in results] == [i + 1 for i in range(1000)]


def test_every_method(service):
    async def main():
        async with forkpool.AsyncClient(service.socket, timeout=20) as fp:
            assert await fp.ping() == {"pong": True, "pid": service.pid}
            assert len((await fp.status())["workers"]) == service.workers
            assert "add" in {job["name"] for job in await fp.jobs()}
            assert (await fp.run("add", {"a": 2}, b=40))["rows"] == [{"sum": 42}]
            many = await fp.run_many([("add", {"a": i, "b": 0}) for i in range(2000)])
            assert [r["rows"][0]["sum"] for r in many] == list(range(2000))
            assert (await fp.request("run", job="add", args={"a": 1}))["rows"] == [{"sum": 2}]

    run(main())


def test_errors_are_the_same_exceptions(service):
    async def main():
        async with forkpool.AsyncClient(service.socket, timeout=20) as fp:
            with pytest.raises(forkpool.DbError) as raised:
                await fp.run("divide", a=1, b=0)
            assert raised.value.sqlstate == "22012"
            with pytest.raises(forkpool.UnknownJob):
                await fp.run("no_such_job")
            with pytest.raises(forkpool.Timeout):
                await fp.run("sleep", seconds=10, timeout=0.2)
            mixed = await fp.run_many([("add", {"a": 1}), ("add", {"a": "x"})],
                                      return_exceptions=True)
            assert mixed[0]["rows"] == [{"sum": 2}]
            assert isinstance(mixed[1], forkpool.InvalidArgs)
            with pytest.raises(forkpool.InvalidArgs):
                await fp.run_many([("add", {"a": 1}), ("add", {"a": "x"})])
            # The connection serves on after every error.
            assert (await fp.ping())["pong"] is True

    run(main())


def test_unreachable_names_the_path():
    async def main():
        with pytest.raises(forkpool.Unreachable) as raised:
            await forkpool.AsyncClient("/nonexistent/forkpool.sock").ping()
        assert raised.value.path == "/nonexistent/forkpool.sock"

    run(main())


def test_a_connection_the_service_closed_is_replaced(start_service):
    service = start_service(service_keys={"max_request_bytes": "1024"})

    async def main():
        async with forkpool.AsyncClient(service.socket) as fp:
            with pytest.raises(forkpool.TooLarge):
                await fp.run("add_item", parent_id=1, name="x" * 4000)
            assert (await fp.run("add", a=1))["rows"] == [{"sum": 2}]

    run(main())


def test_one_client_serves_one_loop_after_another(service):
    fp = forkpool.AsyncClient(service.socket)
    for _ in range(2):  # a connection of a closed loop is never reused
        assert run(fp.ping())["pong"] is True
