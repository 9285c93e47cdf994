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
    args = ap.parse_args()
    from tests.native_writers import write_dcp, write_zero

    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    hf = [hf_folder(cache / f"hf/step{s}", s, SHAPE["hidden"], SHAPE["layers"], SHAPE["vocab"]) for s in (1, 2)]
    tiny = [hf_folder(cache / f"tiny/step{s}", s, 16, 2, 512) for s in (1, 2)]
    fmts: dict[str, tuple[list[Path], list[Path]]] = {}
    dcp = [cache / "dcp" / f.name for f in hf]
    dcp_tiny = [cache / "dcp_tiny" / f.name for f in tiny]
    for src, out in zip(hf + tiny, dcp + dcp_tiny):
        if not (out / ".metadata").is_file():
            write_dcp(src, out)
    fmts["dcp"] = (dcp, dcp_tiny)
    if args.zero:
        if not (cache / "zero" / "zero3" / hf[1].name / "latest").is_file():
            write_zero((3,), cache / "zero", hf, timeout=3600)
            write_zero((3,), cache / "zero_tiny", tiny, timeout=3600)
        fmts["zero3"] = (
            [cache / "zero" / "zero3" / f.name for f in hf],
            [cache / "zero_tiny" / "zero3" / f.name for f in tiny],
        )

    from ckptmerge.checkpoints.reader import CheckpointReader
    from ckptmerge.checkpoints.stream import DEFAULT_WRITE_BYTES

    meta = CheckpointReader(hf[1]).meta()
    largest = max(m.nbytes for m in meta.values())
    params = sum(m.numel for m in meta.values())
    print(f"model: {params / 1e6:.1f}M parameters, largest tensor {largest / 1e6:.1f} MB (fp32)")
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
            rows.append(r)
            print(f"{r['name']:<44} rc={r['rc']} wall {r['wall_s']:>6.1f} s  peak RSS {r['peak_rss_mb']:>8.1f} MB")
        cap = DEFAULT_WRITE_BYTES / 1e6
        for label, _ in trees:
            extra = runs[label + "merge"]["peak_rss_mb"] - runs[label + "tiny"]["peak_rss_mb"]
            print(
                f"{fmt} {label or 'this tree '}: (peak - tiny - write queue cap {cap:.1f} MB) / largest tensor = "
                f"{(extra - cap) * 1e6 / largest:.2f} (target <= 2); peak - tiny = {extra:.1f} MB = "
                f"{extra * 1e6 / largest:.2f} x the largest tensor"
            )
        if "merge small queue" in runs:
            small_q = runs["merge small queue"]["peak_rss_mb"] - runs["tiny"]["peak_rss_mb"]
            print(
                f"{fmt}: with a {args.small_queue_mib:g} MiB write queue: peak - tiny = {small_q:.1f} MB = "
                f"{small_q * 1e6 / largest:.2f} x the largest tensor; the 64 MiB queue cost "
                f"{runs['merge']['peak_rss_mb'] - runs['merge small queue']['peak_rss_mb']:.1f} MB at this size"
            )
        if "full" in runs:
            print(f"{fmt}: full conversion of one checkpoint: {runs['full']['peak_rss_mb']:.1f} MB")
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")
    (cache / "native_memory.json").write_text(json.dumps({"largest_bytes": largest, "params": params, "runs": rows}))


if __name__ == "__main__":
    main()
