"""What the checkpoints hold, checked before any trial (issue 15): `python src/main.py` per case, as a user runs it.

Each bad case ends with one `error:` line naming the problem, exit status 2, nothing registered and
nothing written; each case was measured to run a pointless or wrong search (or a traceback) before.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from tests.conftest import run_main

pytestmark = pytest.mark.slow

NAN_KEY = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
F8_KEY = "gpt_neox.layers.0.attention.dense.weight"


def _edit_tensors(src, dst, edit):
    """A copy of checkpoint ``src`` (same folder name under ``dst``) whose tensors ``edit(state)`` changed."""
    folder = dst / src.name
    shutil.copytree(src, folder)
    f = folder / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})
    return folder


def _nan(state):
    state[NAN_KEY][3, 5] = float("nan")


def _f8(state):
    state[F8_KEY] = state[F8_KEY].to(torch.float8_e4m3fn)


def _no_tokenizer(src, dst):
    folder = dst / src.name
    shutil.copytree(src, folder)
    for f in folder.glob("tokenizer*"):
        f.unlink()
    return folder


def _cases(traj, tmp):
    a, b = traj.checkpoints[-2], traj.checkpoints[-1]
    tasks = ["eval.tasks=[ckptmerge_dev_bpb]", f"eval.include_path={traj.tasks_dir}"]
    search = ["model=local"] + tasks
    merge = ["action=merge", "model=local", "merge.weights=[0.5,0.5]", f"merge.output_dir={tmp / 'o'}"]
    link = tmp / "link"
    link.symlink_to(b, target_is_directory=True)
    loop = tmp / "loop"
    loop.symlink_to(loop)
    copy = tmp / "copy"
    shutil.copytree(b, copy)
    f8a, f8b = _edit_tensors(a, tmp / "f8", _f8), _edit_tensors(b, tmp / "f8", _f8)
    # action=merge where the check is the same for every action: it fails in ~4 s, a search spends
    # ~15 s opening its MLflow store first. The search cases show the checks run before any trial.
    return {
        "no tokenizer in newest": (
            merge + [f"model.checkpoints=[{a},{_no_tokenizer(b, tmp / 'nt')}]"],
            "has no tokenizer files",
        ),
        "NaN in newest, search": (
            search + [f"model.checkpoints=[{a},{_edit_tensors(b, tmp / 'nan1', _nan)}]"],
            f"step00090 has NaN or Inf in tensor {NAN_KEY}",
        ),
        "NaN in older, merge": (
            merge + [f"model.checkpoints=[{_edit_tensors(a, tmp / 'nan2', _nan)},{b}]"],
            f"step00060 has NaN or Inf in tensor {NAN_KEY}: every merge that gives it weight is "
            "NaN there; set merge.allow_nonfinite=true",
        ),
        "same checkpoint, trailing slash": (merge + [f"model.checkpoints=[{b},{b}/]"], "are the same checkpoint"),
        "same checkpoint, ..": (merge + [f"model.checkpoints=[{b},{b}/../{b.name}]"], "are the same checkpoint"),
        "same checkpoint, symlink": (merge + [f"model.checkpoints=[{b},{link}]"], "are the same checkpoint"),
        "same checkpoint, copy": (
            merge + [f"model.checkpoints=[{b},{copy}]"],
            "are the same checkpoint (identical weights)",
        ),
        "float8 tensor, search": (
            search + [f"model.checkpoints=[{f8a},{f8b}]"],
            f"tensor {F8_KEY} has dtype float8_e4m3fn",
        ),
        "float8 tensor, merge": (
            merge + [f"model.checkpoints=[{f8a},{f8b}]"],
            f"tensor {F8_KEY} has dtype float8_e4m3fn",
        ),
        "symlink loop": (merge + [f"model.checkpoints=[{a},{loop}]"], "symlink loop"),
        "negative seed": (search + [f"model.checkpoints=[{a},{b}]", "search.seed=-1"], "search.seed"),
        "alpha next to 1": (search + [f"model.checkpoints=[{a},{b}]", "search.alpha=0.99999"], "search.alpha=0.99999"),
    }


CASES = [
    "no tokenizer in newest",
    "NaN in newest, search",
    "NaN in older, merge",
    "same checkpoint, trailing slash",
    "same checkpoint, ..",
    "same checkpoint, symlink",
    "same checkpoint, copy",
    "float8 tensor, search",
    "float8 tensor, merge",
    "symlink loop",
    "negative seed",
    "alpha next to 1",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_content_fails_cleanly(case, tmp_path, tiny_trajectory):
    args, expected = _cases(tiny_trajectory, tmp_path)[case]
    db = tmp_path / "mlflow.db"
    args = args + [f"tracking.uri=sqlite:///{db}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_main(args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "merged").exists()
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "run" / "result.json").exists()
    if db.exists():
        assert MlflowClient(f"sqlite:///{db}").search_registered_models() == []


def test_newest_first_names_the_override(tmp_path, tiny_trajectory):
    """Newest-first is refused, naming the steps and the override; with model.order=given the same list is merged."""
    a, b = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    base = [
        "action=merge",
        "model=local",
        f"model.checkpoints=[{b},{a}]",
        "merge.weights=[0.25,0.75]",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = run_main(base + [f"merge.output_dir={tmp_path / 'refused'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not oldest first: step00090 (step 90), step00060 (step 60)" in lines[0], proc.stderr[
        -2000:
    ]
    assert "model.order=given" in lines[0]
    assert not (tmp_path / "refused").exists()
    proc = run_main(base + [f"merge.output_dir={tmp_path / 'given'}", "model.order=given"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = load_file(str(tmp_path / "given" / "model.safetensors"))
    older, newer = load_file(str(b / "model.safetensors")), load_file(str(a / "model.safetensors"))
    # the given order: b is the "oldest" with weight 0.25
    assert torch.allclose(merged[NAN_KEY], 0.25 * older[NAN_KEY] + 0.75 * newer[NAN_KEY])
    # every action writes result.json with the fields all actions share
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["action"] == "merge" and result["output_dir"] == str(tmp_path / "given")
    assert result["mlflow"] is None and result["registered_model"] is None
    assert result["weights"] == {b.name: 0.25, a.name: 0.75}


def test_merge_allow_nonfinite_writes_the_nan_merge(tmp_path, tiny_trajectory):
    """action=merge with merge.allow_nonfinite=true takes a NaN checkpoint and says so; the NaN is kept."""
    a, b = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    bad = _edit_tensors(a, tmp_path / "nan", _nan)
    out = tmp_path / "merged"
    proc = run_main(
        [
            "action=merge",
            "model=local",
            f"model.checkpoints=[{bad},{b}]",
            "merge.weights=[0.5,0.5]",
            f"merge.output_dir={out}",
            "merge.allow_nonfinite=true",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"NaN or Inf in tensor {NAN_KEY}" in proc.stdout + proc.stderr
    merged = load_file(str(out / "model.safetensors"))
    assert torch.isnan(merged[NAN_KEY][3, 5]) and int(torch.isnan(merged[NAN_KEY]).sum()) == 1
    assert os.path.isfile(out / "tokenizer.json")
