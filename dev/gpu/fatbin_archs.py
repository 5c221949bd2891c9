#!/usr/bin/env python3
"""Counts the CUDA code a shared library or executable carries, per kind and architecture: its .nv_fatbin section's
entries, ELF cubins (SASS, run as they are) and PTX (compiled by the driver at first use, which for large kernels
can take minutes). cuobjdump tells the same, but the development machine has only nvcc, so the prebuilt binaries
of build_cuda_here.sh are checked here before they travel.

  python3 dev/gpu/fatbin_archs.py build/bin/libggml-cuda.so      # e.g. "ptx sm_90: 146, sass sm_90: 146"
"""
import collections
import struct
import sys

FATBIN_MAGIC = 0xBA55ED50
KINDS = {1: "ptx", 2: "sass"}


def fatbin_section(data):
    if data[4] != 2 or data[5] != 1:
        raise SystemExit("not a little-endian 64-bit ELF file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i*shentsize) for i in range(shnum)]
    names = sections[shstrndx][4]
    for s in sections:
        if data[names + s[0]:data.index(b"\0", names + s[0])] == b".nv_fatbin":
            return s[4], s[5]
    raise SystemExit("no .nv_fatbin section: no CUDA device code here")


def count(path):
    data = open(path, "rb").read()
    if data[:4] != b"\x7fELF":
        raise SystemExit(f"{path}: not an ELF file")
    off, size = fatbin_section(data)
    seen = collections.Counter()
    pos, end = off, off + size
    while pos + 16 <= end:
        magic, _, header, body = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:   # fatbins are aligned: step to the next candidate
            pos += 8
            continue
        p, q = pos + header, pos + header + body
        while p + 32 <= q:   # entries: kind, header size, payload size ... architecture at byte 28
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, p)
            if entry_header == 0:
                raise SystemExit(f"malformed fatbin entry at byte {p}")
            seen[(KINDS.get(kind, f"kind{kind}"), struct.unpack_from("<I", data, p + 28)[0])] += 1
            p += entry_header + payload
        pos = q
    return seen


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    seen = count(sys.argv[1])
    print(", ".join(f"{kind} sm_{arch}: {n}" for (kind, arch), n in sorted(seen.items())))
