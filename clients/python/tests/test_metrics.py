"""The service's scrape endpoint (`service.metrics_listen`) read by the reference parser,
prometheus_client's: every family parses, and the per-job series count what was run."""

from __future__ import annotations

import urllib.request

import pytest

import forkpool
from harness import free_port

parser = pytest.importorskip("prometheus_client.parser")


def test_a_live_scrape_parses_and_counts_jobs_by_outcome(start_service):
    port = free_port()
    service = start_service(service_keys={"metrics_listen": f'"127.0.0.1:{port}"'})
    with forkpool.Client(service.socket, timeout=20) as fp:
        for a in range(3):
            fp.run("add", {"a": a, "b": 1})
        with pytest.raises(forkpool.DbError):
            fp.run("divide", {"a": 1, "b": 0})

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    families = {family.name: family for family in parser.text_string_to_metric_families(text)}

    jobs = families["forkpool_jobs"]
    assert jobs.type == "counter"
    counts = {(s.labels["job"], s.labels["outcome"]): s.value
              for s in jobs.samples if s.name == "forkpool_jobs_total"}
    assert counts[("add", "ok")] == 3
    assert counts[("divide", "db_error")] == 1

    duration = families["forkpool_job_duration_seconds"]
    assert duration.type == "histogram"
    add_count = [s.value for s in duration.samples
                 if s.name.endswith("_count") and s.labels["job"] == "add"]
    assert add_count == [3]
    assert families["forkpool_job_queue_wait_seconds"].type == "histogram"
    assert families["process_start_time_seconds"].type == "gauge"
    assert families["forkpool_workers"].type == "gauge"

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=20) as answer:
        assert (answer.status, answer.read()) == (200, b"ok\n")
