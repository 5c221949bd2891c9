#!/usr/bin/env python3
"""Copy the result tables into README.md, so that a number lives in one place: results/.

    python3 tools/readme_tables.py          # rewrite README.md in place
    python3 tools/readme_tables.py --check  # exit 1 if README.md quotes a table other than its file's

The README marks each quoted table with the file it comes from:

    <!-- table: results/cpu/speed.md -->
    | ... the first markdown table of that file ... |
    <!-- /table -->

A marked file that does not exist yet leaves its quote as it is.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def first_table(path):
    lines, started = [], False
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            started = True
            lines.append(line)
        elif started:
            break
    if not lines:
        raise SystemExit(f"{path.relative_to(ROOT)}: no markdown table")
    return "\n".join(lines) + "\n"


def quote(m):
    src = ROOT / m.group(2)
    return m.group(1) + (first_table(src) if src.exists() else m.group(3)) + m.group(4)


def main():
    old = README.read_text()
    new = BLOCK.sub(quote, old)
    if "--check" in sys.argv[1:]:
        if new != old:
            raise SystemExit("README.md: a quoted table differs from its results file (run tools/readme_tables.py)")
        return
    if new != old:
        README.write_text(new)
    print(f"README.md: {len(BLOCK.findall(new))} tables quoted" + ("" if new != old else ", unchanged"))


if __name__ == "__main__":
    main()
