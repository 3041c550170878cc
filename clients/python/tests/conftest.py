"""Fixtures: one private PostgreSQL cluster for the session, one shared forkpool service on
it (durable jobs off), one with durable jobs on, and a factory for tests that need a service
of their own (one they stop, kill or configure differently)."""

from __future__ import annotations

from typing import Callable, Iterator, List

import pytest

import forkpool
from harness import Cluster, Service

#: Jobs the tests add to the repository's (add, add_item, now, sleep).
TEST_JOBS = {
    "divide": 'description = "a / b, for division by zero"\n'
              'sql = "SELECT :a / :b AS q"\n\n[params]\na = "int8"\nb = "int8"\n',
    "echo_types": 'description = "Returns its arguments: the JSON forms of the types"\n'
                  'sql = "SELECT :d AS d, :ts AS ts, :n AS n, :u AS u, :b AS b"\n\n'
                  '[params]\nd = "date"\nts = "timestamptz"\nn = "numeric"\nu = "uuid"\n'
                  'b = "bytea"\n',
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def service(cluster: Cluster) -> Iterator[Service]:
    """The service most tests share: four single-threaded workers, the test jobs."""
    service = Service(cluster, workers=4, jobs=TEST_JOBS).wait_ready()
    yield service
    service.stop()


#: `[queue]` of the durable tests' service: durable jobs on, in its database `main`, and idle
#: slots claiming every 100 ms (a scheduled job runs that soon after its time).
DURABLE_QUEUE = {"database": '"main"', "poll_interval": '"100ms"'}


@pytest.fixture(scope="session")
def durable_service(cluster: Cluster) -> Iterator[Service]:
    """A service with durable jobs on (the shared `service` has them off): four workers,
    the test jobs, ready once its queue keeper has migrated the schema."""
    service = Service(cluster, workers=4, jobs=TEST_JOBS, queue_keys=DURABLE_QUEUE)
    service.wait_ready().wait_durable_ready()
    yield service
    service.stop()


@pytest.fixture
def start_service(cluster: Cluster) -> Iterator[Callable[..., Service]]:
    """Starts a service of the test's own (keyword arguments as `Service`), ready; every
    one started is stopped when the test ends."""
    started: List[Service] = []

    def start(**options) -> Service:
        options.setdefault("jobs", TEST_JOBS)
        service = Service(cluster, **options)
        started.append(service)
        return service.wait_ready()

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def fp(service: Service) -> Iterator[forkpool.Client]:
    client = forkpool.Client(service.socket, timeout=20)
    yield client
    client.close()
