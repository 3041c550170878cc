"""What waking another process costs on this machine: two processes pass one byte back and
forth through a pair of pipes (like `perf bench sched pipe`), first free to run on any core,
then both pinned to one core. Prints the median round trip in µs of each, for
benches/compare.sh: a relayed job waits on such wake-ups in turn (client, master, worker,
PostgreSQL, worker, master, client: four more than pgbench's), so this is the floor of the
latency a relay adds.

usage: python3 wakeup.py [ROUND_TRIPS]
"""

import os
import statistics
import sys
import time


def round_trips(count, cpu=None):
    """Median µs of `count` round trips between this process and a forked child."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    pid = os.fork()
    if pid == 0:
        for _ in range(count):
            os.read(to_child, 1)
            os.write(from_child, b"x")
        os._exit(0)
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        os.write(from_parent, b"x")
        os.read(to_parent, 1)
        samples.append(time.perf_counter_ns() - start)
    os.waitpid(pid, 0)
    for fd in (to_child, from_parent, to_parent, from_child):
        os.close(fd)
    return statistics.median(samples) / 1000


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    everywhere = os.sched_getaffinity(0)
    free = round_trips(count)
    pinned = round_trips(count, cpu=min(everywhere))
    os.sched_setaffinity(0, everywhere)
    print(f"{free:.1f} {pinned:.1f}")


if __name__ == "__main__":
    main()
