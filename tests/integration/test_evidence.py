"""Gains with their evidence, end to end: a real gain registers with an interval above zero; a gain
within noise registers nothing and says why.

The real gain is made the way checkpoint averaging earns it in pretraining: two checkpoints that are the
same model plus independent noise (as SGD leaves them). Their average halves the noise, so the merge
at λ≈0.5 scores better than the newest alone on the same documents, by far more than the noise of
the score. The no-gain case: a multiple-choice task on which the tiny model is at chance.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file, save_file

from tests.conftest import run_main

pytestmark = pytest.mark.slow


def _noisy_copy(src, dst, seed: int, scale: float):
    """``src`` with Gaussian noise of ``scale`` × each floating tensor's own standard deviation."""
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    state = load_file(str(dst / "model.safetensors"))
    for k, t in state.items():
        if t.is_floating_point() and t.numel() > 1:
            state[k] = t + scale * t.float().std() * torch.randn(t.shape, generator=gen).to(t.dtype)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _search(tmp_path, traj, checkpoints, task, extra=()):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_main(
        [
            "model=local",
            f"model.checkpoints=[{','.join(map(str, checkpoints))}]",
            f"eval.tasks=[{task}]",
            f"eval.include_path={traj.tasks_dir}",
            "search.budget=4",
            f"tracking.uri={uri}",
            "registry.name=evidence",
            "tracking.log_plots=false",
            f"hydra.run.dir={tmp_path / 'run'}",
            *extra,
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads((tmp_path / "run" / "result.json").read_text()), MlflowClient(uri)


def test_a_real_gain_registers_with_an_interval_above_zero(tmp_path, tiny_trajectory):
    good = tiny_trajectory.checkpoints[-1]
    older = _noisy_copy(good, tmp_path / "step00100", seed=1, scale=0.3)
    newer = _noisy_copy(good, tmp_path / "step00200", seed=2, scale=0.3)
    proc, res, client = _search(tmp_path, tiny_trajectory, [older, newer], "ckptmerge_dev_bpb")
    gain = res["gain"]
    assert gain["significant"] and gain["ci_low"] > 0 and gain["p_value"] < 0.05, gain
    assert 0.2 < res["lambda"] < 0.8
    assert res["decision"] == "registered" and res["registered_model"]["version"] == "1"
    mv = client.get_model_version_by_alias("evidence", "candidate")
    assert mv.tags["significant"] == "true"
    assert "dev gain over step00200 alone" in proc.stdout and ": significant" in proc.stdout
    assert "decision: registered" in proc.stdout
    parent = client.get_run(res["mlflow"]["run_id"])
    assert parent.data.tags["ckptmerge.decision"] == "registered"
    assert parent.data.metrics["gain_over_newest.significant"] == 1.0


def test_a_gain_within_noise_registers_nothing_and_says_why(tmp_path, tiny_trajectory):
    a, b = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    proc, res, client = _search(tmp_path, tiny_trajectory, [a, b], "ckptmerge_dev_mc", ["eval.limit=24"])
    gain = res["gain"]
    assert not gain["significant"] and gain["ci_low"] <= 0 <= gain["ci_high"], gain
    assert res["decision"] == "keep-newest" and res["registered_model"] is None
    assert client.search_registered_models() == []
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("decision:"))
    assert (
        f"no merge is significantly better than {b.name}" in line
        and "95% CI [" in line
        and "nothing registered" in line
    )
    assert all(t["objective_se"] > 0 for t in res["trials"])
    assert f"merged checkpoint (not better than {b.name} beyond noise; not registered)" in proc.stdout
    # eval.limit is a seeded sample of the task, not its first documents
    scores = json.loads(open(client.download_artifacts(res["trials"][0]["run_id"], "doc_scores.json")).read())
    ids = scores["ckptmerge_dev_mc/acc"]["doc_ids"]
    assert len(ids) == 24 and ids != list(range(24))
