"""Start-up and exit of ``action=merge``: a weights-only merge of two tiny checkpoints (28 tensors, 0.1 MB), so
the process's wall time is its interpreter, imports, Hydra, checks and exit, the part of
``merge_throughput.py``'s "process" time that does not grow with the model. Rounds interleave this tree
with ``--baseline-src`` trees (e.g. ``git archive OLD src conf | tar -x -C /tmp/old``), so every tree sees
the same machine load; the median of each is printed with the load average.

    python benchmarks/merge_startup.py --rounds 7 --baseline-src /tmp/old/src
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]


def one_run(src: Path, inputs: list[Path], work: Path) -> float:
    shutil.rmtree(work / "out", ignore_errors=True)
    shutil.rmtree(work / "run", ignore_errors=True)
    cmd = [
        sys.executable,
        str(src / "main.py"),
        "model=local",
        f"model.checkpoints=[{','.join(map(str, inputs))}]",
        "action=merge",
        "merge.weights=[0.3,0.7]",
        f"merge.output_dir={work / 'out'}",
        f"hydra.run.dir={work / 'run'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{src}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline-src", type=Path, action="append", default=[], help="another tree's src/ (repeatable)")
    args = ap.parse_args()
    from tests.helpers import tiny_neox

    trees = {"this tree": REPO / "src", **{f"baseline {p}": p.resolve() for p in args.baseline_src}}
    with tempfile.TemporaryDirectory(prefix="ckptmerge-startup-") as tmp:
        work = Path(tmp)
        inputs = [tiny_neox(work / f"step{s}", seed=s) for s in (1, 2)]  # no tokenizer: a weights-only merge
        print(f"load average at the start (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs", flush=True)
        walls: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, src in trees.items():
                walls[name].append(one_run(src, inputs, work))
    for name, w in walls.items():
        print(f"{name:<40} median {statistics.median(w):.2f} s  ({' '.join(f'{x:.2f}' for x in w)})")
    print(f"load average at the end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
