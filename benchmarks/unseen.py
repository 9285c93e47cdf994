"""What the benchmarks measure on: a trajectory and tasks the project never selected anything on.

The embedded trajectory built with another seed (new initialisation, new document split), and lm-eval
tasks over its held-out docstrings plus stdlib code (out of domain), which no search of the project
ever scored. Offline: everything is built locally.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ckptmerge.trajectory.tasks import bpb_task_yaml  # noqa: E402


def unseen_trajectory(seed: int) -> Any:
    """The default-preset embedded trajectory with ``seed`` (built once, cached like the default one)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir

    spec = TrajectorySpec(**{**TrajectorySpec.default().__dict__, "seed": seed})
    return build_trajectory(spec, default_cache_dir())


def held_out_texts(traj: Any) -> list[str]:
    """The trajectory's held-out test docstrings, then its out-of-domain code."""
    texts = []
    for name in ("test.jsonl", "test_ood.jsonl"):
        for line in (traj.tasks_dir / name).read_text().splitlines():
            doc = json.loads(line)
            texts.append(doc.get("text") or doc.get("page") or next(v for v in doc.values() if isinstance(v, str)))
    return texts


def write_bpb_task(name: str, texts: list[str], folder: Path) -> None:
    """A bits-per-byte lm-eval task ``name`` over ``texts`` (JSONL and YAML in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / f"{name}.yaml").write_text(bpb_task_yaml(name, data))


def make_task(traj: Any, folder: Path) -> Path:
    """``bench_unseen_bpb``: every held-out text."""
    write_bpb_task("bench_unseen_bpb", held_out_texts(traj), folder)
    return folder


def split_tasks(traj: Any, folder: Path) -> Path:
    """``unseen_dev_bpb`` and ``unseen_test_bpb``: alternate held-out texts."""
    texts = held_out_texts(traj)
    write_bpb_task("unseen_dev_bpb", texts[0::2], folder)
    write_bpb_task("unseen_test_bpb", texts[1::2], folder)
    return folder
