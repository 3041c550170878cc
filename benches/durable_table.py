"""Prints compare.sh's durable table: forkpool `bench --durable` against graphile-worker.

Usage: durable_table.py FORKPOOL_JSON FORKPOOL_SERIAL_JSON GRAPHILE_JSON

FORKPOOL_JSON is `forkpool bench --durable --durable-latency K --json` (pipelined enqueue,
burn-down, start latency under load and idle); FORKPOOL_SERIAL_JSON the same with one
client and pipeline 1 (one enqueue at a time); GRAPHILE_JSON what benches/graphile/bench.mjs
printed. Ratios are forkpool ÷ graphile-worker for rates, graphile-worker ÷ forkpool for
latencies, so above 1 means forkpool does better.
"""
import json
import sys

fork, serial, graphile = (json.load(open(path)) for path in sys.argv[1:4])

rows = [
    ("burn-down, jobs/s", fork["burn_down"]["jobs_per_second"],
     graphile["burn_down"]["jobs_per_second"], "rate"),
    ("burn-down, seconds", fork["burn_down"]["seconds"], graphile["burn_down"]["seconds"], "time"),
    ("enqueue batched/pipelined, jobs/s", fork["enqueue"]["jobs_per_second"],
     graphile["add_jobs"]["jobs_per_second"], "rate"),
    ("enqueue one at a time, jobs/s", serial["enqueue"]["jobs_per_second"],
     graphile["add_job_serial"]["jobs_per_second"], "rate"),
    ("enqueue-to-start p50 under load, ms", fork["start_latency_ms"]["p50"],
     graphile["start_latency_ms"]["p50"], "time"),
    ("enqueue-to-start p99 under load, ms", fork["start_latency_ms"]["p99"],
     graphile["start_latency_ms"]["p99"], "time"),
    ("enqueue-to-start p50 idle, ms", fork["idle"]["start_latency_ms"]["p50"],
     graphile["idle"]["start_latency_ms"]["p50"], "time"),
    ("enqueue-to-start p99 idle, ms", fork["idle"]["start_latency_ms"]["p99"],
     graphile["idle"]["start_latency_ms"]["p99"], "time"),
    ("round trip idle p50 (enqueue to done seen), ms", fork["idle"]["round_trip_ms"]["p50"],
     graphile["idle"]["round_trip_ms"]["p50"], "time"),
]


def ratio(ours, theirs, kind):
    if not ours or not theirs:
        return "—"
    return f"{(ours / theirs if kind == 'rate' else theirs / ours):.2f}×"


def figure(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


print("| measure | forkpool | graphile-worker | forkpool better by |")
print("|---|---:|---:|---:|")
for name, ours, theirs, kind in rows:
    print(f"| {name} | {figure(ours)} | {figure(theirs)} | {ratio(ours, theirs, kind)} |")
