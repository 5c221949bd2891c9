"""Per-kernel summary of an ncu CSV (dev/gpu/cuda_device.sh prof): calls, total and mean duration, by kernel name.

Usage: python3 dev/gpu/cuda_prof.py prof-tq4_0-d0.csv [more.csv ...]
"""
import csv
import re
import sys
from collections import defaultdict


def short(name):
    name = re.sub(r"\(.*", "", name)       # drop the argument list
    name = re.sub(r"^void ", "", name)
    return name[:70]


def summarize(path):
    calls, total = defaultdict(int), defaultdict(float)
    with open(path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]   # ncu prints its own log lines before the table
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(row["Metric Unit"], 1e-3)
        k = short(row["Kernel Name"])
        calls[k] += 1
        total[k] += float(row["Metric Value"].replace(",", "")) * scale
    print(f"# {path}: {sum(calls.values())} kernels, {sum(total.values()):.1f} us")
    print(f"{'kernel':<70} {'calls':>6} {'total us':>10} {'mean us':>8}")
    for k in sorted(total, key=total.get, reverse=True)[:25]:
        print(f"{k:<70} {calls[k]:>6} {total[k]:>10.1f} {total[k] / calls[k]:>8.2f}")


for p in sys.argv[1:]:
    summarize(p)
