"""Opcode counts of one kernel's SASS (cuobjdump -sass -fun NAME): the whole kernel and its main loop.

The main loop is taken as the instructions from the first to the last HMMA, widened to the enclosing branch
targets; good enough to see which opcodes a tile of the decode kernel spends its issue slots on.
Usage: python3 tools/cuda_sass.py sass.txt
"""
import re
import sys
from collections import Counter

INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?")


def parse(path):
    rows = []
    for line in open(path):
        m = INSN.search(line)
        if m:
            rows.append((int(m.group(1), 16), m.group(3), m.group(3) + (m.group(4) or "")))
    return rows


def table(title, rows, top=30):
    c = Counter(op for _, op, _ in rows)
    print(f"# {title}: {len(rows)} instructions")
    for op, n in c.most_common(top):
        print(f"{op:<12} {n:6d}")


rows = parse(sys.argv[1])
table("kernel", rows)
hmma = [i for i, (_, op, _) in enumerate(rows) if op == "HMMA"]
if hmma:
    loop = rows[hmma[0]:hmma[-1] + 1]
    print()
    table(f"first to last HMMA ({len(hmma)} HMMA)", loop)
