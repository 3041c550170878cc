"""Jobs/s of the Python client's `run_many` against `forkpool bench` on the same service, and
against the Python peer forkpool exists to replace: `multiprocessing.Pool` with an engine
per child (SQLAlchemy's `create_engine` in the pool's initializer, psycopg 3), the same SQL
on the same cluster, one after the other in the same run.

Usage: python_client.py SOCKET FORKPOOL_BINARY DATABASE_URL [--workers W] [--duration S]
                        [--pipeline P]

DATABASE_URL is the SQLAlchemy URL the peer connects with (`postgresql+psycopg://...`).
Prints one line. Run by benches/compare.sh, in a virtual environment holding the client,
sqlalchemy and psycopg.
"""

import argparse
import json
import multiprocessing
import subprocess
import sys
import time

import forkpool

# The statement pgbench and `forkpool bench` run (compare.sh's plus_one job).
SQL = "SELECT :a + 1 AS b"
BATCH = 1000  # jobs per run_many call

engine = None  # one per Pool child, made after the fork


def forkpool_bench(binary, socket, workers, duration, pipeline):
    out = subprocess.run(
        [binary, "bench", "--socket", socket, "--job", "plus_one", "--args", '{"a": 500}',
         "--clients", str(workers), "--pipeline", str(pipeline), "--duration", str(duration),
         "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["jobs_per_second"]


def run_many_rate(socket, duration, pipeline):
    """One Python process: `run_many` batches of BATCH jobs until `duration` is up."""
    fp = forkpool.Client(socket, timeout=30)
    calls = [("plus_one", {"a": i % 1000 + 1}) for i in range(BATCH)]
    fp.run_many(calls[:10], pipeline=pipeline)  # connected, workers' pools warm
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        results = fp.run_many(calls, pipeline=pipeline)
        assert results[-1]["rows"] == [{"b": calls[-1][1]["a"] + 1}]
        done += len(results)
    rate = done / (time.perf_counter() - started)
    fp.close()
    return rate


def make_engine(url):
    """The Pool initializer: the engine is created in the child, after the fork, as
    SQLAlchemy's documentation asks (an engine inherited across fork shares its sockets)."""
    global engine
    from sqlalchemy import create_engine
    engine = create_engine(url, pool_size=1, max_overflow=0)


def run_for(duration):
    """In a Pool child: SQL until `duration` is up, one connection checkout per job as a
    web handler or task would do it; returns how many ran."""
    from sqlalchemy import text
    statement = text(SQL)
    done = 0
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        with engine.connect() as conn:
            conn.execute(statement, {"a": done % 1000 + 1}).scalar_one()
        done += 1
    return done


def pool_rate(url, workers, duration):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=make_engine, initargs=(url,)) as pool:
        pool.map(run_for, [0.2] * workers, chunksize=1)  # connected and warm
        started = time.perf_counter()
        counts = pool.map(run_for, [duration] * workers, chunksize=1)
        return sum(counts) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("binary")
    parser.add_argument("database_url")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--pipeline", type=int, default=128)
    args = parser.parse_args()
    bench = forkpool_bench(args.binary, args.socket, args.workers, int(args.duration), 4)
    run_many = run_many_rate(args.socket, args.duration, args.pipeline)
    peer = pool_rate(args.database_url, args.workers, args.duration)
    print(f"python, sslmode=require: run_many (1 process, pipeline {args.pipeline}) "
          f"{run_many:.0f} jobs/s = {run_many / bench:.2f} × forkpool bench "
          f"({args.workers} clients, pipeline 4: {bench:.0f} jobs/s) = {run_many / peer:.1f} × "
          f"multiprocessing.Pool({args.workers}) with create_engine per child "
          f"({peer:.0f} jobs/s)")


if __name__ == "__main__":
    sys.exit(main())
