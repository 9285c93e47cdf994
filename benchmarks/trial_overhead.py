"""Per-trial merge time against per-trial evaluation time, on the resident model a search uses.

A search trial overwrites the resident model's parameters in place with the merge of the checkpoint
tensors (zero-copy views of the memory-mapped files) and evaluates the dev tasks with lm-eval. This
measures both halves, trial by trial, on:

* **embedded**: the last two checkpoints of the embedded trajectory with its dev tasks, exactly what
  ``python src/main.py`` searches (the trajectory is built once and cached);
* **pythia-1b**: two Pythia-1B-shaped fp16 checkpoints (created, or reused from the cache of
  ``merge_throughput.py``; they get the embedded trajectory's tokenizer, whose ids fit the vocabulary)
  with a small eval: a rolling log-likelihood task over ``--docs`` short documents.

It prints median merge and eval seconds per trial, their ratio (target <= 5%), and the process's
anonymous vs file-backed resident memory: the sources cost page cache (file-backed, shared, evictable),
not k extra models of anonymous memory.

    python benchmarks/trial_overhead.py                  # both; ~5 min on 2 cores
    python benchmarks/trial_overhead.py --only embedded  # ~1 min once the trajectory is cached
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from ckptmerge.trajectory.tasks import bpb_task_yaml  # noqa: E402


def memory() -> dict[str, float]:
    """GB of this process's anonymous and file-backed resident memory, and its peak RSS."""
    fields = dict(ln.split(":", 1) for ln in open("/proc/self/status").read().splitlines() if ":" in ln)
    return {k: int(fields[k].split()[0]) / 2**20 for k in ("RssAnon", "RssFile", "VmHWM")}


def run_trials(
    label: str,
    folders: list[Path],
    tasks: list[str],
    include: list[str],
    max_length: int | None,
    lambdas: list[float],
    limit: int | None,
) -> dict:
    from ckptmerge.checkpoints import CheckpointSet
    from ckptmerge.evaluation.harness import TaskSuite, make_lm
    from ckptmerge.resident import SingleResidentModel

    t0 = time.perf_counter()
    cset = CheckpointSet.from_refs([str(f) for f in folders])
    resident = SingleResidentModel(cset)
    suite = TaskSuite(tasks, include, limit)
    lm = make_lm(resident.model, resident.tokenizer, 16, max_length, "cpu")
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in resident.model.parameters())
    print(
        f"[{label}] {params / 1e6:.1f}M parameters, resident model built in {build_s:.1f} s; "
        f"sources {resident.nbytes_sources() / 1e9:.2f} GB mapped; memory {memory()}",
        flush=True,
    )
    rows = []
    for lam in lambdas:
        t = time.perf_counter()
        resident.apply([1.0 - lam, lam])
        merge_s = time.perf_counter() - t
        t = time.perf_counter()
        metrics = suite.evaluate(lm)
        eval_s = time.perf_counter() - t
        rows.append({"lambda": lam, "merge_s": merge_s, "eval_s": eval_s, "metrics": metrics})
        print(
            f"[{label}] λ={lam:.2f}: merge {merge_s:.3f} s, eval {eval_s:.2f} s ({100 * merge_s / eval_s:.2f}%)",
            flush=True,
        )
    steady = rows[1:] or rows  # the first trial also faults the mapped sources in
    merge_med = statistics.median(r["merge_s"] for r in steady)
    eval_med = statistics.median(r["eval_s"] for r in steady)
    return {
        "label": label,
        "parameters": params,
        "build_s": build_s,
        "trials": rows,
        "first_merge_s": rows[0]["merge_s"],
        "median_merge_s": merge_med,
        "median_eval_s": eval_med,
        "ratio": merge_med / eval_med,
        "memory_gb": memory(),
        "torch_threads": torch.get_num_threads(),
    }


def embedded(lambdas: list[float]) -> dict:
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir

    traj = build_trajectory(TrajectorySpec.default(), default_cache_dir())
    return run_trials(
        "embedded",
        list(traj.checkpoints[-2:]),
        list(traj.dev_tasks),
        [str(traj.tasks_dir)],
        traj.max_length,
        lambdas,
        None,
    )


def pythia(cache: Path, docs: int, lambdas: list[float], work: Path) -> dict:
    import shutil

    from benchmarks.merge_throughput import ensure_inputs
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir

    traj = build_trajectory(TrajectorySpec.default(), default_cache_dir())
    folders = ensure_inputs(cache, "pythia-1b")
    for f in folders:  # tokenizer files only; the weights are untouched
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (traj.checkpoints[-1] / name).is_file() and not (f / name).is_file():
                shutil.copy2(traj.checkpoints[-1] / name, f / name)
    texts = [json.loads(ln)["text"] for ln in (traj.tasks_dir / "dev.jsonl").read_text().splitlines()[:docs]]
    data = work / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t[:400]}) + "\n" for t in texts))
    (work / "bench_small_bpb.yaml").write_text(bpb_task_yaml("bench_small_bpb", data))
    return run_trials("pythia-1b", folders, ["bench_small_bpb"], [str(work)], 256, lambdas, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["embedded", "pythia-1b"])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("CKPTMERGE_BENCH_CACHE", "/tmp/ckptmerge-bench")))
    ap.add_argument(
        "--docs", type=int, default=16, help="documents in the Pythia-1B eval (400 characters each at most)"
    )
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1.0, 0.0, 0.5, 0.8, 0.9])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = []
    if args.only in (None, "embedded"):
        out.append(embedded(args.lambdas))
    if args.only in (None, "pythia-1b"):
        with tempfile.TemporaryDirectory() as work:
            out.append(pythia(args.cache, args.docs, args.lambdas, Path(work)))
    print(f"\n{'pair':<10} {'params':>8} {'merge s':>9} {'eval s':>8} {'merge/eval':>11}  target <= 5%")
    for r in out:
        ok = "ok" if r["ratio"] <= 0.05 else "MISSED"
        print(
            f"{r['label']:<10} {r['parameters'] / 1e6:>7.0f}M {r['median_merge_s']:>9.3f} {r['median_eval_s']:>8.2f} "
            f"{100 * r['ratio']:>10.2f}%  {ok}   (first trial merge {r['first_merge_s']:.2f} s; "
            f"RSS anon {r['memory_gb']['RssAnon']:.2f} GB, file {r['memory_gb']['RssFile']:.2f} GB)"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
