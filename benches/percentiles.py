"""Prints "p50 p99" (nearest rank) of the numbers in column N (1-based) of stdin's lines."""
import math
import sys

column = int(sys.argv[1]) - 1
values = sorted(float(line.split()[column]) for line in sys.stdin if line.strip())
if not values:
    sys.exit("percentiles.py: no values (did the run log any transaction?)")


def rank(fraction):
    return values[max(1, math.ceil(fraction * len(values))) - 1]


print(f"{rank(0.50):.0f} {rank(0.99):.0f}")
