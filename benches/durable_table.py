"""Prints compare.sh's durable table: forkpool `bench --durable` against graphile-worker,
a forkpool column for each `queue.batch` measured.

Usage: durable_table.py GRAPHILE_JSON BATCH:RUN_JSON:SERIAL_JSON:DRAIN_JSON ...

GRAPHILE_JSON is what benches/graphile/bench.mjs printed. For each batch setting: RUN_JSON
is `forkpool bench --durable --durable-latency K --json` (pipelined enqueue while the jobs
run, burn-down, start latency under load and idle), SERIAL_JSON the same with one client and
pipeline 1 (one enqueue at a time), DRAIN_JSON `bench --durable --drain --json` (the enqueue
into a paused queue, then the drain of what it stored).

graphile-worker's `addJobs` stores all the jobs in one statement, one transaction: its
workers see none of them until it commits, so its rate stands beside both of forkpool's
enqueue rows, and its drain is counted from the moment `addJobs` returned. Ratios are
forkpool ÷ graphile-worker for rates, graphile-worker ÷ forkpool for latencies, so above 1
means forkpool does better.
"""
import json
import sys

graphile = json.load(open(sys.argv[1]))
runs = []
for spec in sys.argv[2:]:
    batch, run, serial, drain = spec.split(":")
    runs.append((batch, json.load(open(run)), json.load(open(serial)), json.load(open(drain))))

graphile_drain = graphile["jobs"] / (graphile["burn_down"]["seconds"] - graphile["add_jobs"]["seconds"])

# (measure, what it is of forkpool's runs, graphile-worker's figure, rate or time)
rows = [
    ("burn-down (enqueue and run together), jobs/s",
     lambda r, s, d: r["burn_down"]["jobs_per_second"], graphile["burn_down"]["jobs_per_second"], "rate"),
    ("burn-down, seconds",
     lambda r, s, d: r["burn_down"]["seconds"], graphile["burn_down"]["seconds"], "time"),
    ("drain of stored jobs, jobs/s",
     lambda r, s, d: d["burn_down"]["jobs_per_second"], graphile_drain, "rate"),
    ("enqueue pipelined while jobs run, jobs/s",
     lambda r, s, d: r["enqueue"]["jobs_per_second"], graphile["add_jobs"]["jobs_per_second"], "rate"),
    ("enqueue pipelined, nothing draining, jobs/s",
     lambda r, s, d: d["enqueue"]["jobs_per_second"], graphile["add_jobs"]["jobs_per_second"], "rate"),
    ("enqueue one at a time, jobs/s",
     lambda r, s, d: s["enqueue"]["jobs_per_second"], graphile["add_job_serial"]["jobs_per_second"], "rate"),
    ("enqueue-to-start p50 under load, ms",
     lambda r, s, d: r["start_latency_ms"]["p50"], graphile["start_latency_ms"]["p50"], "time"),
    ("enqueue-to-start p99 under load, ms",
     lambda r, s, d: r["start_latency_ms"]["p99"], graphile["start_latency_ms"]["p99"], "time"),
    ("enqueue-to-start p50 idle, ms",
     lambda r, s, d: r["idle"]["start_latency_ms"]["p50"], graphile["idle"]["start_latency_ms"]["p50"], "time"),
    ("enqueue-to-start p99 idle, ms",
     lambda r, s, d: r["idle"]["start_latency_ms"]["p99"], graphile["idle"]["start_latency_ms"]["p99"], "time"),
    ("round trip idle p50 (enqueue to done seen), ms",
     lambda r, s, d: r["idle"]["round_trip_ms"]["p50"], graphile["idle"]["round_trip_ms"]["p50"], "time"),
]


def ratio(ours, theirs, kind):
    if not ours or not theirs:
        return "—"
    return f"{(ours / theirs if kind == 'rate' else theirs / ours):.2f}×"


def figure(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


names = [f"forkpool batch {batch}" for batch, *_ in runs]
print("| measure | " + " | ".join(names) + " | graphile-worker | "
      + " | ".join(f"batch {batch} ÷ graphile" for batch, *_ in runs) + " |")
print("|---|" + "---:|" * (2 * len(runs) + 1))
for name, of, theirs, kind in rows:
    ours = [of(run, serial, drain) for _, run, serial, drain in runs]
    print(f"| {name} | " + " | ".join(figure(v) for v in ours) + f" | {figure(theirs)} | "
          + " | ".join(ratio(v, theirs, kind) for v in ours) + " |")
print("(graphile-worker's addJobs stores every job in one transaction: nothing drains while it"
      " runs, so its rate stands beside both enqueue rows, and its drain is counted from the"
      " moment addJobs returned.)")
