"""Peak memory of merging two training-native checkpoints (PyTorch DCP, DeepSpeed ZeRO-3) of a ~100M
parameter GPT-NeoX, against the libraries' own full conversions of one of them.

Writes (or reuses from ``--cache``) two checkpoints of random fp32 weights, each with AdamW-sized
optimizer state beside the model (never read by ckptmerge): DCPs by ``torch.distributed.checkpoint``
in one process, ZeRO-3 tags by DeepSpeed on two gloo ranks (``--zero``, slower). Then, each as its own
process with its peak RSS from ``wait4``:

* **ckptmerge merge**: ``python src/main.py action=merge`` of the two (content checks included);
* **ckptmerge tiny**: the same command over two tiny checkpoints: the fixed overhead (Python, torch,
  transformers, the code), so ``peak - tiny`` is what the model's size costs;
* **dcp_to_torch_save** / **zero_to_fp32**: the libraries' full conversion of *one* checkpoint to a
  ``torch.save`` file, what a user runs today before a merge.

* **ckptmerge merge, write queue N MiB**: the merge again with the stream's write budget (merged chunks
  waiting for the writer, ``stream.DEFAULT_WRITE_BYTES``, 64 MiB) lowered to ``--small-queue-mib``
  through ``write_merged``'s keyword default, set in the child process by this benchmark only: what
  the write queue costs at this model size, measured rather than assumed.

Target (issue 23): peak within 2x the largest tensor plus a fixed overhead. The fixed overhead is what
does not grow with the model: the tiny run (interpreter, libraries, code) plus the write queue's cap
(a tiny model never fills it, so the tiny run does not include it). Printed: ``(peak - tiny - queue cap)
/ largest tensor`` (target <= 2), with ``peak - tiny`` and the small-queue run beside it.

    python benchmarks/native_memory.py --cache /tmp/native-bench            # DCP
    python benchmarks/native_memory.py --cache /tmp/native-bench --zero     # and ZeRO-3
    python benchmarks/native_memory.py --cache /tmp/native-bench --zero --skip-full --sizes 128,256,512
        # three widths (largest tensor 25.8, 51.5, 103.0 MB): fits peak = a * largest tensor + c per format
    git archive OLD src conf | tar -x -C /tmp/old    # then, the old tree measured in the same run:
    python benchmarks/native_memory.py --zero --baseline-src /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

# hidden 512, 12 layers, Pythia's vocabulary: 89M parameters, the largest tensors the two 103 MB embeddings.
SHAPE = {"hidden": 512, "layers": 12, "vocab": 50304}
# --sizes: other widths, same depth and vocabulary (the embedding, vocab x hidden, stays the largest tensor):
# 128 -> 25.8 MB, 15.3M parameters; 256 -> 51.5 MB, 35.2M parameters.

_WRAP = """
import json, os, runpy, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, st, ru = os.wait4(pid, 0)
print("@@rusage " + json.dumps({"rc": os.waitstatus_to_exitcode(st), "maxrss_kb": ru.ru_maxrss}), flush=True)
"""


# Runs src/main.py with write_merged's write budget set to argv[1] bytes (the benchmark's lever only).
_SMALL_QUEUE = """
import runpy, sys
budget = int(sys.argv.pop(1))
from ckptmerge.checkpoints import writer
writer.write_merged.__kwdefaults__["write_bytes"] = budget
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def measure(name: str, cmd: list[str], cwd: Path, src: Path = REPO / "src") -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{src}:{REPO}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@rusage ")]
    ru = json.loads(lines[-1][9:]) if lines else {"rc": -1, "maxrss_kb": 0}
    if ru["rc"] != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
    return {"name": name, "rc": ru["rc"], "wall_s": round(wall, 1), "peak_rss_mb": round(ru["maxrss_kb"] / 1024, 1)}


def hf_folder(folder: Path, seed: int, hidden: int, layers: int, vocab: int) -> Path:
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        intermediate_size=4 * hidden,
        max_position_embeddings=2048,
    )
    GPTNeoXForCausalLM(cfg).save_pretrained(folder)
    # a tokenizer that fits any vocabulary: the tiny trajectory's (a byte-level BPE)
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory

    traj = build_trajectory(TrajectorySpec.tiny(), folder.parent / "traj", progress=False)
    AutoTokenizer.from_pretrained(traj.checkpoints[-1]).save_pretrained(folder)
    return folder


def size_folder(cache: Path, hidden: int) -> Path:
    """Where a width's checkpoints live: the default width at the cache's root (caches built before
    ``--sizes`` stay usable), any other in ``h<hidden>/``."""
    return cache if hidden == SHAPE["hidden"] else cache / f"h{hidden}"


def native_versions(root: Path, folders: list[Path], zero: bool, suffix: str = "") -> dict[str, list[Path]]:
    """The DCP (and with ``zero``, ZeRO-3) versions of ``folders``, written once into ``root/dcp<suffix>``
    and ``root/zero<suffix>/zero3``."""
    from tests.native_writers import write_dcp, write_zero

    out = {"dcp": [root / f"dcp{suffix}" / f.name for f in folders]}
    for src, dst in zip(folders, out["dcp"]):
        if not (dst / ".metadata").is_file():
            write_dcp(src, dst)
    if zero:
        out["zero3"] = [root / f"zero{suffix}" / "zero3" / f.name for f in folders]
        if not (out["zero3"][-1] / "latest").is_file():
            write_zero((3,), root / f"zero{suffix}", folders, timeout=3600)
    return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y = a x + c`` (numpy's polyfit): (a, c, largest absolute residual); exact through two
    points."""
    import numpy as np

    a, c = np.polyfit(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), 1)
    return float(a), float(c), float(max(abs(y - (a * x + c)) for x, y in zip(xs, ys)))


def measure_size(
    args: argparse.Namespace,
    cache: Path,
    hf: list[Path],
    tiny: list[Path],
    fmts: dict[str, tuple[list[Path], list[Path]]],
    points: dict[str, list[tuple[float, float, float | None]]],
) -> list[dict]:
    """Every run at one model size; prints its lines and appends (largest MB, peak MB, small-queue peak MB)
    per format to ``points``."""
    from ckptmerge.checkpoints.reader import CheckpointReader
    from ckptmerge.checkpoints.stream import DEFAULT_WRITE_BYTES

    meta = CheckpointReader(hf[1]).meta()
    largest = max(m.nbytes for m in meta.values())
    params = sum(m.numel for m in meta.values())
    print(f"model: {params / 1e6:.1f}M parameters, largest tensor {largest / 1e6:.1f} MB (fp32)", flush=True)
    work = cache / "work"
    rows = []
    for fmt, (big, small) in fmts.items():
        runs = {}
        trees = [("", REPO / "src")] + ([("baseline ", args.baseline_src.resolve())] if args.baseline_src else [])
        for label, src in trees:
            plan = [("merge", big, hf[1]), ("tiny", small, tiny[1])]
            if args.small_queue_mib > 0 and not label:
                plan.insert(1, ("merge small queue", big, hf[1]))
            for name, inputs, config in plan:
                out = work / f"{fmt}-{name.replace(' ', '-')}"
                shutil.rmtree(out, ignore_errors=True)
                lever = (
                    ["-c", _SMALL_QUEUE, str(int(args.small_queue_mib * 2**20))] if name == "merge small queue" else []
                )
                cmd = [
                    sys.executable,
                    *lever,
                    str(src / "main.py"),
                    "action=merge",
                    "model=local",
                    f"model.checkpoints=[{','.join(map(str, inputs))}]",
                    f"model.config={config}",
                    "merge.weights=[0.3,0.7]",
                    f"merge.output_dir={out}",
                    f"hydra.run.dir={work / ('run-' + fmt + '-' + name.replace(' ', '-'))}",
                ]
                runs[label + name] = measure(f"ckptmerge {label}{fmt} {name}", cmd, cache, src)
                shutil.rmtree(out, ignore_errors=True)
        if args.skip_full:
            pass
        elif fmt == "dcp":
            conv = [
                sys.executable,
                "-c",
                "import sys; from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as f; "
                "f(sys.argv[1], sys.argv[2])",
                str(big[1]),
                str(work / "full.pt"),
            ]
            runs["full"] = measure("dcp_to_torch_save (one checkpoint)", conv, cache)
        else:  # zero3
            conv = [
                sys.executable,
                "-c",
                "import sys; from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict as f; "
                "f(sys.argv[1], sys.argv[2])",
                str(big[1]),
                str(work / "full"),
            ]
            runs["full"] = measure("zero_to_fp32 (one checkpoint)", conv, cache)
        shutil.rmtree(work / "full", ignore_errors=True)
        (work / "full.pt").unlink(missing_ok=True)
        for r in runs.values():
            rows.append({**r, "largest_bytes": largest, "params": params})
            print(f"{r['name']:<44} rc={r['rc']} wall {r['wall_s']:>6.1f} s  peak RSS {r['peak_rss_mb']:>8.1f} MB")
        cap = DEFAULT_WRITE_BYTES / 1e6
        for label, _ in trees:
            extra = runs[label + "merge"]["peak_rss_mb"] - runs[label + "tiny"]["peak_rss_mb"]
            print(
                f"{fmt} {label or 'this tree '}: (peak - tiny - write queue cap {cap:.1f} MB) / largest tensor = "
                f"{(extra - cap) * 1e6 / largest:.2f} (target <= 2); peak - tiny = {extra:.1f} MB = "
                f"{extra * 1e6 / largest:.2f} x the largest tensor"
            )
        small_q = None
        if "merge small queue" in runs:
            small_q = runs["merge small queue"]["peak_rss_mb"]
            print(
                f"{fmt}: with a {args.small_queue_mib:g} MiB write queue: peak - tiny = "
                f"{small_q - runs['tiny']['peak_rss_mb']:.1f} MB = "
                f"{(small_q - runs['tiny']['peak_rss_mb']) * 1e6 / largest:.2f} x the largest tensor; the 64 MiB queue "
                f"cost {runs['merge']['peak_rss_mb'] - small_q:.1f} MB at this size"
            )
        if "full" in runs:
            print(f"{fmt}: full conversion of one checkpoint: {runs['full']['peak_rss_mb']:.1f} MB")
        points.setdefault(fmt, []).append((largest / 1e6, runs["merge"]["peak_rss_mb"], small_q))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ckptmerge-native-bench"))
    ap.add_argument("--zero", action="store_true", help="also ZeRO-3 (two gloo ranks write it; minutes)")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="another ckptmerge source tree (e.g. `git archive OLD src`) whose merge is measured in the same run",
    )
    ap.add_argument("--skip-full", action="store_true", help="skip the libraries' full conversions")
    ap.add_argument(
        "--small-queue-mib",
        type=float,
        default=2.0,
        help="the write budget of the extra merge run (MiB; 2 = one merged fp32 chunk; 0 skips the run)",
    )
    ap.add_argument(
        "--sizes",
        default=str(SHAPE["hidden"]),
        help="comma-separated model widths (hidden size; 12 layers, Pythia's vocabulary each); with two or more, "
        "peak RSS is fitted as a * largest tensor + c per format (target a <= 2)",
    )
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    tiny = [hf_folder(cache / f"tiny/step{s}", s, 16, 2, 512) for s in (1, 2)]
    points: dict[str, list[tuple[float, float, float | None]]] = {}  # run -> (largest MB, peak MB, small-q MB)
    rows = []
    tiny_native = native_versions(cache, tiny, args.zero, "_tiny")
    for hidden in sizes:
        root = size_folder(cache, hidden)
        hf = [hf_folder(root / f"hf/step{s}", s, hidden, SHAPE["layers"], SHAPE["vocab"]) for s in (1, 2)]
        big = native_versions(root, hf, args.zero)
        fmts = {f: (big[f], tiny_native[f]) for f in big}
        rows += measure_size(args, cache, hf, tiny, fmts, points)
    if len(sizes) > 1:
        print("\nfit over the widths " + ", ".join(map(str, sizes)) + ": peak RSS = a * largest tensor + c")
        for run, pts in points.items():
            for label, ys in (("peak", [p[1] for p in pts]), ("peak, small queue", [p[2] for p in pts])):
                if any(y is None for y in ys):
                    continue
                a, c, res = fit_line([p[0] for p in pts], [float(y) for y in ys])  # type: ignore[arg-type]
                print(
                    f"{run:<6} {label:<18} a = {a:.2f} (target <= 2), c = {c:.1f} MB, largest residual {res:.1f} MB; "
                    + ", ".join(f"{x:.1f} MB -> {y:.1f} MB" for x, y in zip([p[0] for p in pts], ys))
                )
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    (cache / "native_memory.json").write_text(json.dumps({"sizes": sizes, "runs": rows, "points": points}))


if __name__ == "__main__":
    main()
