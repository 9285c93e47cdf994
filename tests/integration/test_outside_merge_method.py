"""A merge method registered from outside the package, by a user's own launcher, is the merge a search
evaluates in its trials and the merge it writes (issue: trials used to be linear whatever merge.method said)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import MAIN

pytestmark = pytest.mark.slow

LAUNCHER = '''
import runpy, sys
from ckptmerge.merge import register

def pick(tensors, weights, out_dtype):
    """Not an average: the tensor of the checkpoint with the largest weight."""
    best = max(range(len(weights)), key=lambda i: weights[i])
    return tensors[best].to(out_dtype or tensors[best].dtype).clone()

register("pick", pick)
sys.argv = [{main!r}, *sys.argv[1:]]
runpy.run_path({main!r}, run_name="__main__")
'''


def test_a_search_evaluates_and_writes_with_an_outside_method(tmp_path, traj_cache, tiny_trajectory):
    launcher = tmp_path / "my_launcher.py"
    launcher.write_text(LAUNCHER.format(main=str(MAIN)))
    args = [
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        "merge.method=pick",
        "search.budget=4",
        "eval.limit=10",
        "registry.enabled=false",
        "tracking.log_plots=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, str(launcher), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    by_lambda = {t["lambda"]: t["objective"] for t in result["trials"]}
    older, newest = by_lambda[0.0], by_lambda[1.0]
    assert older != newest
    # every trial is one checkpoint or the other, never an average: the trials ran "pick"
    for lam, objective in by_lambda.items():
        assert objective == (newest if lam > 0.5 else older), (lam, objective)
    # the written merge is that checkpoint's tensors, bit for bit, and re-scores to the searched objective
    chosen = tiny_trajectory.checkpoints[-1] if result["lambda"] > 0.5 else tiny_trajectory.checkpoints[-2]
    written = load_file(str(next((tmp_path / "run" / "merged").glob("*.safetensors"))))
    source = load_file(str(next(chosen.glob("*.safetensors"))))
    for key, tensor in written.items():
        assert tensor.equal(source[key]), key
    assert result["rescored_objective"] == pytest.approx(result["objective"], rel=1e-9)


def test_an_unknown_merge_method_is_one_line_before_anything_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(MAIN), "merge.method=pik", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: merge.method='pik' is not a known merge method")
