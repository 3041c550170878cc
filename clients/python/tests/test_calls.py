"""Every method of the thread client against the real service."""

from __future__ import annotations

import base64
import datetime
import decimal
import uuid

import pytest

import forkpool


def test_ping_answers_pong_with_the_master_pid(fp, service):
    assert fp.ping() == {"pong": True, "pid": service.pid}


def test_status_lists_every_worker_and_the_queue(fp, service):
    status = fp.status()
    assert len(status["workers"]) == service.workers
    assert all(worker["state"] for worker in status["workers"])
    assert "depth" in status["queue"] and "limit" in status["queue"]


def test_jobs_lists_the_catalog_with_parameters(fp):
    jobs = {job["name"]: job for job in fp.jobs()}
    assert {"add", "add_item", "sleep", "divide"} <= set(jobs)
    params = {param["name"]: param for param in jobs["add"]["params"]}
    assert params["a"]["type"] == "int8"
    assert params["b"]["default"] == 1


def test_run_takes_arguments_as_keywords_a_mapping_or_both(fp):
    assert fp.run("add", a=2, b=40)["rows"] == [{"sum": 42}]
    assert fp.run("add", {"a": 2, "b": 40})["rows"] == [{"sum": 42}]
    assert fp.run("add", {"a": 2}, b=40)["rows"] == [{"sum": 42}]
    with pytest.raises(TypeError, match="both"):
        fp.run("add", {"a": 2}, a=3)


def test_run_returns_the_whole_result(fp, service):
    result = fp.run("add", a=1)
    assert result["rows"] == [{"sum": 2}]  # b's default
    assert result["rows_affected"] == [1]
    assert 1 <= result["worker"] <= service.workers
    assert result["elapsed_ms"] >= 0


def test_run_of_a_transaction_job_writes_both_statements(fp, cluster):
    parent = 9_000_001
    first = fp.run("add_item", parent_id=parent, name="first")
    fp.run("add_item", parent_id=parent, name="second")
    assert first["rows"][0]["parent_id"] == parent
    assert cluster.psql(f"SELECT child_count FROM parents WHERE id = {parent}") == "2"
    assert cluster.psql(f"SELECT count(*) FROM items WHERE parent_id = {parent}") == "2"


def test_arguments_of_python_types_arrive_as_their_postgres_types(fp):
    day = datetime.date(2024, 2, 29)
    moment = datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc)
    amount = decimal.Decimal("12345678901234567890.50")
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    blob = bytes(range(256))
    [row] = fp.run("echo_types", d=day, ts=moment, n=amount, u=ident, b=blob)["rows"]
    assert row["d"] == "2024-02-29"
    assert datetime.datetime.fromisoformat(row["ts"].replace("Z", "+00:00")) == moment
    assert decimal.Decimal(row["n"]) == amount
    assert row["u"] == str(ident)
    assert base64.b64decode(row["b"]) == blob


def test_an_argument_json_cannot_carry_fails_before_anything_is_sent(fp):
    with pytest.raises(TypeError, match="object"):
        fp.run("add", a=object())
    with pytest.raises(ValueError):
        fp.run_many([("add", {"a": 1}), ("add", {"a": float("nan")})])


def test_run_many_returns_results_in_the_order_of_the_calls_not_of_the_answers(fp):
    # The sleep is answered last, after the adds that were sent behind it.
    calls = [("sleep", {"seconds": 0.3})] + [("add", {"a": i, "b": 0}) for i in range(20)]
    results = fp.run_many(calls)
    assert results[0]["rows"] == [{"slept": 0.3}]
    assert [r["rows"][0]["sum"] for r in results[1:]] == list(range(20))


def test_run_many_of_ten_thousand_jobs_keeps_their_order(fp):
    results = fp.run_many([("add", {"a": i, "b": 1}) for i in range(10_000)])
    assert len(results) == 10_000
    assert [r["rows"][0]["sum"] for r in results] == [i + 1 for i in range(10_000)]


def test_run_many_waits_for_every_answer_then_raises_the_first_error(fp):
    calls = [("add", {"a": 1}), ("divide", {"a": 1, "b": 0}), ("add", {"a": "x"}),
             ("add", {"a": 3})]
    with pytest.raises(forkpool.DbError):
        fp.run_many(calls)
    # Nothing of that batch is left on the connection: the next call gets its own answer.
    assert fp.run("add", a=5)["rows"] == [{"sum": 6}]
    results = fp.run_many(calls, return_exceptions=True)
    assert results[0]["rows"] == [{"sum": 2}]
    assert isinstance(results[1], forkpool.DbError)
    assert isinstance(results[2], forkpool.InvalidArgs)
    assert results[3]["rows"] == [{"sum": 4}]
    assert fp.run_many([]) == []


def test_request_sends_any_op_with_its_fields(fp):
    assert fp.request("run", job="add", args={"a": 1, "b": 2})["rows"] == [{"sum": 3}]
    assert fp.request("ping")["pong"] is True


def test_the_socket_comes_from_forkpool_socket_when_not_given(service, monkeypatch):
    monkeypatch.setenv("FORKPOOL_SOCKET", service.socket)
    with forkpool.Client() as fp:
        assert fp.socket_path == service.socket
        assert fp.ping()["pid"] == service.pid
    monkeypatch.delenv("FORKPOOL_SOCKET")
    assert forkpool.Client().socket_path == forkpool.DEFAULT_SOCKET == "/run/forkpool/forkpool.sock"


def test_a_closed_client_opens_a_new_connection_on_its_next_call(fp):
    fp.ping()
    fp.close()
    assert fp.ping()["pong"] is True
