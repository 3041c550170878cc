"""Prints the comparison table from compare.sh's results file.

Each line: MODE SSLMODE RATE P50_US P99_US [FAILED]. forkpool's rows are compared with
pgbench at the same sslmode and concurrency (forkpool-serial with pgbench-serial: one client
each) and with connect-per-job; the added latency is forkpool-serial's p50 minus
pgbench-serial's, the time the path through forkpool adds to a prepared query.
"""
import sys

results, pipeline = sys.argv[1], sys.argv[2]
rows = [line.split() for line in open(results) if line.strip()]
rate = {(mode, ssl): float(r) for mode, ssl, r, *_ in rows}
p50 = {(mode, ssl): float(p) for mode, ssl, _, p, *_ in rows}
print(f"{'mode':<18}{'sslmode':<9}{'jobs/s':>9}{'p50 µs':>9}{'p99 µs':>9}"
      f"{'÷ pgbench':>11}{'÷ conn/job':>12}{'failed':>8}")
for mode, ssl, r, p50_us, p99_us, *failed in rows:
    r = float(r)
    vs_pgbench = vs_connect = ""
    if mode.startswith("forkpool"):
        baseline = "pgbench-serial" if mode == "forkpool-serial" else "pgbench"
        vs_pgbench = f"{r / rate[(baseline, ssl)]:.2f}"
        vs_connect = f"{r / rate[('connect-per-job', ssl)]:.1f}×"
    print(f"{mode:<18}{ssl:<9}{r:>9.0f}{float(p50_us):>9.0f}{float(p99_us):>9.0f}"
          f"{vs_pgbench:>11}{vs_connect:>12}{(failed or [''])[0]:>8}")
print(f"forkpool-p1: bench --pipeline 1; forkpool-p{pipeline}: --pipeline {pipeline}; "
      "-serial: one client, one job at a time.\n"
      "connect-per-job = pgbench -C: its p50/p99 exclude the connect (pgbench times it apart).")
for ssl in sorted({ssl for _, ssl, *_ in rows}, reverse=True):
    added = p50[("forkpool-serial", ssl)] - p50[("pgbench-serial", ssl)]
    print(f"added latency, sslmode={ssl}: p50 {added:.0f} µs (forkpool-serial − pgbench-serial)")
