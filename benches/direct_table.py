"""Prints the direct-job rows of compare.sh (issue #15's goals) from one run.

The results file has one line per run: NAME RATE P50_US P99_US [FAILED]. Every forkpool row
is divided by the pgbench row of the same concurrency on the same cluster in the same run:
pipelined and 2-client rows by `pgbench -c 2 -j 2`, the 1-client row by `pgbench -c 1`. The
added latency is forkpool's p50 minus that pgbench row's p50: the time the path through the
master and a worker adds to a prepared query.
"""
import sys

results, memory = sys.argv[1], sys.argv[2]
rows = [line.split() for line in open(results) if line.strip()]
rate = {name: float(r) for name, r, *_ in rows}
p50 = {name: float(p) for name, _, p, *_ in rows}
baseline = {"forkpool-serial": "pgbench-serial"}
print(f"{'mode':<28}{'jobs/s':>9}{'p50 µs':>9}{'p99 µs':>9}{'÷ pgbench':>11}"
      f"{'+p50 µs':>9}{'failed':>8}")
for name, r, p50_us, p99_us, *failed in rows:
    ratio = added = ""
    if name.startswith("forkpool"):
        base = baseline.get(name, "pgbench-c2")
        ratio = f"{float(r) / rate[base]:.2f}"
        added = f"{p50[name] - p50[base]:.0f}"
    print(f"{name:<28}{float(r):>9.0f}{float(p50_us):>9.0f}{float(p99_us):>9.0f}{ratio:>11}"
          f"{added:>9}{(failed or [''])[0]:>8}")
print("÷ pgbench and +p50: against pgbench-c2 (-c 2 -j 2), forkpool-serial against "
      "pgbench-serial (-c 1).")
print("\nworker memory (/proc/PID/smaps_rollup), per worker: jobs done, PSS, private dirty, RSS")
for line in open(memory):
    label, jobs, pss, dirty, rss = line.split()
    print(f"  {label:<10} {int(jobs):>7} jobs  PSS {int(pss) / 1024:.2f} MiB  "
          f"private dirty {int(dirty) / 1024:.2f} MiB  RSS {int(rss) / 1024:.2f} MiB")
