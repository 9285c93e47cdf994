"""A linear merge of two safetensors checkpoints without torch: what a torch-free merge path would cost.

Issue 23 asks for a merge process 5x faster than mergekit; ``import torch`` alone takes 1.3-1.5 s of
the ~3 s that leaves at Pythia-1B. This script is the lever measured: numpy reads both inputs through
memory maps, computes ``w0 * a + w1 * b`` in float32 per chunk (as ckptmerge and mergekit do for fp16
tensors), casts back and writes one safetensors file per input file, with the newest input's header.
Tensors that are not floating point are copied from the newest input. No checks, no model card, no
config: it is a floor for a torch-free engine, not one. ``merge_throughput.py --torch-free``
times it as its own process beside the others.

    python benchmarks/numpy_merge.py OLDER NEWER OUT --weights 0.3 0.7
"""

from __future__ import annotations

import argparse
import json
import mmap
import struct
from pathlib import Path

import numpy as np

FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
CHUNK = 1 << 22  # elements per step: 16 MB of float32, the same order as ckptmerge's own read units


def _open(path: Path) -> tuple[mmap.mmap, dict, int]:
    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), header, 8 + n


def merge_file(older: Path, newer: Path, out: Path, w_old: float, w_new: float) -> None:
    ma, ha, base_a = _open(older)
    mb, hb, base_b = _open(newer)
    header = json.dumps(hb, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    keys = sorted((k for k in hb if k != "__metadata__"), key=lambda k: hb[k]["data_offsets"][0])
    with out.open("wb") as w:
        w.write(struct.pack("<Q", len(header)) + header)
        for key in keys:
            s, e = hb[key]["data_offsets"]
            dtype = FLOATS.get(hb[key]["dtype"])
            if dtype is None:  # masks and integer buffers: the newest input's bytes
                w.write(mb[base_b + s : base_b + e])
                continue
            sa, ea = ha[key]["data_offsets"]
            a = np.frombuffer(ma, dtype=dtype, count=(ea - sa) // np.dtype(dtype).itemsize, offset=base_a + sa)
            b = np.frombuffer(mb, dtype=dtype, count=(e - s) // np.dtype(dtype).itemsize, offset=base_b + s)
            acc = np.empty(min(CHUNK, b.size), np.float32)
            tmp = np.empty_like(acc)
            res = np.empty(acc.size, dtype)
            for o in range(0, b.size, CHUNK):
                n = min(CHUNK, b.size - o)
                np.multiply(a[o : o + n], np.float32(w_old), out=acc[:n], dtype=np.float32)
                np.multiply(b[o : o + n], np.float32(w_new), out=tmp[:n], dtype=np.float32)
                np.add(acc[:n], tmp[:n], out=acc[:n])
                np.copyto(res[:n], acc[:n], casting="unsafe")
                w.write(res[:n].tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("older", type=Path)
    ap.add_argument("newer", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--weights", type=float, nargs=2, default=(0.3, 0.7))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for f in sorted(args.newer.glob("*.safetensors")):
        merge_file(args.older / f.name, f, args.out / f.name, *args.weights)
    index = args.newer / "model.safetensors.index.json"  # the same files and tensors: readable as a checkpoint
    if index.is_file():
        (args.out / index.name).write_bytes(index.read_bytes())


if __name__ == "__main__":
    main()
