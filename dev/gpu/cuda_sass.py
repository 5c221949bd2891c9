"""Opcode counts of one kernel's SASS (cuobjdump -sass -fun NAME): the whole kernel and its main loop.

The main loop is taken as the instructions from the first to the last HMMA (the loop's head and tail, a few
instructions, are left out); good enough to see which opcodes a tile of the decode kernel spends its issue
slots on.
Usage: python3 dev/gpu/cuda_sass.py sass.txt
"""
import re
import sys
from collections import Counter

# an instruction line: /*address*/, an optional predicate, the opcode (its .modifiers are not counted apart)
INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def table(title, ops, top=30):
    print(f"# {title}: {len(ops)} instructions")
    for op, n in Counter(ops).most_common(top):
        print(f"{op:<12} {n:6d}")


ops = [m.group(1) for m in map(INSN.search, open(sys.argv[1])) if m]
table("kernel", ops)
hmma = [i for i, op in enumerate(ops) if op == "HMMA"]
if hmma:
    print()
    table(f"first to last HMMA ({len(hmma)} HMMA)", ops[hmma[0]:hmma[-1] + 1])
