#!/usr/bin/env python3
"""Copy the result tables into README.md and docs/*.md, so that a number lives in one place: results/.

    python3 tools/readme_tables.py          # rewrite them in place
    python3 tools/readme_tables.py --check  # exit 1 if one quotes a table other than its file's

A document marks each quoted table with the file it comes from:

    <!-- table: results/cpu/speed.md -->
    | ... the first markdown table of that file ... |
    <!-- /table -->
and `results/cpu/passkey-gemma3-16k.md#2` quotes the second table of a file that has several.

A marked file that does not exist yet leaves its quote as it is.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


def nth_table(path, n=1):
    tables, lines = [], []
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            tables.append(lines)
            lines = []
    if len(tables) < n:
        raise SystemExit(f"{path.relative_to(ROOT)}: no markdown table number {n}")
    return "\n".join(tables[n - 1]) + "\n"


def quote(m):
    name, _, n = m.group(2).partition("#")
    src = ROOT / name
    return m.group(1) + (nth_table(src, int(n or 1)) if src.exists() else m.group(3)) + m.group(4)


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for doc in DOCS:
        old = doc.read_text()
        new = BLOCK.sub(quote, old)
        name = doc.relative_to(ROOT)
        n = len(BLOCK.findall(new))
        if new != old:
            stale.append(str(name))
            if not check:
                doc.write_text(new)
        if n and not check:
            print(f"{name}: {n} tables quoted" + ("" if new != old else ", unchanged"))
    if stale and check:
        raise SystemExit(f"{', '.join(stale)}: a quoted table differs from its results file (run tools/readme_tables.py)")


if __name__ == "__main__":
    main()
