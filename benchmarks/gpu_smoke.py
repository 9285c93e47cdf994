"""GPU readiness of ``runtime=ray``: a search with one Ray worker per GPU on a Pythia-160M-shaped pair, end
to end (trials, write, verify, test report, registry), then each trial's merge vs evaluation time.

Nothing is downloaded: the pair is written locally with random values in Pythia-160M's exact shape
(``tests/scale/synthetic.py``), with the embedded trajectory's tokenizer and tasks (built locally in a
minute). Without CUDA it says so and exits 0 (nothing to check). Run through ``benchmarks/gpu_smoke.sh``,
which bounds it in time.

    python benchmarks/gpu_smoke.py [--budget 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "src")]

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--work", type=Path, default=None, help="where inputs, MLflow and the run go (default: a temp dir)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_smoke: skipped, no CUDA device visible")
        return 0
    gpus = torch.cuda.device_count()
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu_smoke: {gpus} x {torch.cuda.get_device_name(0)}; work in {work}", flush=True)

    from ckptmerge.trajectory import TrajectorySpec, build_trajectory
    from tests.scale.synthetic import write_neox_checkpoint

    t0 = time.perf_counter()
    traj = build_trajectory(TrajectorySpec.tiny(), work / "trajectory", progress=False)  # tokenizer + tasks
    pair = []
    for i in range(2):
        folder = work / "pythia-160m" / f"step{i + 1}"
        if not (folder / "config.json").is_file():
            write_neox_checkpoint(folder, "pythia-160m", torch.float16, seed=i + 1, tokenizer_from=traj.checkpoints[-1])
        pair.append(folder)
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s", flush=True)

    db = work / "mlflow.db"
    cmd = [
        sys.executable,
        str(REPO / "src" / "main.py"),
        "model=local",
        f"model.checkpoints=[{pair[0]},{pair[1]}]",
        "eval.tasks=[ckptmerge_dev_bpb]",
        "eval.test_tasks=[ckptmerge_test_bpb]",
        f"eval.include_path={traj.tasks_dir}",
        "runtime=ray",
        "runtime.device=cuda",  # runtime.workers=null: one worker per GPU
        f"search.budget={args.budget}",
        "search.stop=budget",
        f"tracking.uri=sqlite:///{db}",
        "registry.name=gpu-smoke",
        "registry.require_significant_gain=false",
        f"hydra.run.dir={work / 'run'}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"gpu_smoke: FAILED, the search exited {proc.returncode} after {wall:.0f} s")
        return 1
    result = json.loads((work / "run" / "result.json").read_text())
    print(
        f"\nsearch end to end: {wall:.0f} s, {result['runtime']['workers']} workers, registered: "
        f"{result['registered_model']}"
    )
    print(f"{'trial':>5} {'lambda':>8} {'pending':>7} {'merge s':>8} {'eval s':>8} {'trial s':>8}")
    for t in sorted(result["trials"], key=lambda t: t["trial"]):
        print(
            f"{t['trial']:>5} {t['lambda']:>8.3f} {t['pending_at_proposal']:>7} {t['merge_seconds'] or 0:>8.2f} "
            f"{t['eval_seconds'] or 0:>8.2f} {t['seconds']:>8.2f}"
        )
    print("gpu_smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
