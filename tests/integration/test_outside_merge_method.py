"""A merge method registered from outside the package, by a user's module named in ``plugins``, runs
in a search (its trials evaluate the merge it writes: trials used to be linear whatever merge.method
said) and in ``action=compare`` as a row of the table, with its settings from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_main

pytestmark = pytest.mark.slow

# A user's own module, beside the command (the working directory), as in docs/add-a-merge-method.md.
PLUGIN = '''
from dataclasses import dataclass

import torch

from ckptmerge.merge import register


@dataclass(frozen=True)
class QuantileSettings:
    q: float = 0.5  # 0.5: the weighted median; 1: the largest value

    def __post_init__(self):
        if not 0 < self.q <= 1:
            raise ValueError(f"q must be in (0, 1], got {self.q!r}")


def quantile(tensors, weights, out_dtype, settings):
    """Elementwise weighted quantile: the smallest value whose cumulative weight reaches q (no average)."""
    if not tensors[0].is_floating_point():
        return tensors[-1].clone()
    values, order = torch.stack(list(tensors)).sort(dim=0)
    cumulative = torch.tensor([float(w) for w in weights], dtype=torch.float64)[order].cumsum(0)
    first = (cumulative >= settings.q - 1e-9).int().argmax(0, keepdim=True)
    return values.gather(0, first).squeeze(0).to(out_dtype or tensors[0].dtype)


register("quantile", quantile, settings=QuantileSettings)
'''


def _user_dir(tmp_path: Path) -> Path:
    (tmp_path / "my_methods.py").write_text(PLUGIN)
    return tmp_path


def _common(tmp_path: Path, traj_cache: Path) -> list[str]:
    return [
        "plugins=[my_methods]",
        "model.trajectory.preset=tiny",
        f"model.trajectory.cache_dir={traj_cache}",
        "eval.limit=10",
        "tracking.log_plots=false",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_a_search_evaluates_and_writes_with_an_outside_method(tmp_path, traj_cache, tiny_trajectory):
    proc = run_main(
        # α=0.1: bo's third initial point is the midpoint 0.55, not λ=0.5, where the weighted median of
        # two checkpoints is a tie (the elementwise smaller value) and belongs to neither
        [
            *_common(tmp_path, traj_cache),
            "merge.method=quantile",
            "search.budget=4",
            "search.alpha=0.1",
            "registry.enabled=false",
        ],
        cwd=_user_dir(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    by_lambda = {t["lambda"]: t["objective"] for t in result["trials"]}
    older, newest = by_lambda[0.1], by_lambda[1.0]
    assert older != newest
    # the weighted median of two checkpoints is one or the other, never an average: the trials ran it
    for lam, objective in by_lambda.items():
        assert lam != 0.5 and objective == (newest if lam > 0.5 else older), (lam, objective)
    # the written merge is that checkpoint's tensors, bit for bit, and re-scores to the searched objective
    chosen = tiny_trajectory.checkpoints[-1] if result["lambda"] > 0.5 else tiny_trajectory.checkpoints[-2]
    written, source = _tensors(tmp_path / "run" / "merged"), _tensors(chosen)
    assert written
    for key, tensor in written.items():
        assert tensor.equal(source[key]), key
    assert result["rescored_objective"] == pytest.approx(result["objective"], rel=1e-9)


def test_compare_runs_an_outside_method_with_its_settings(tmp_path, traj_cache, tiny_trajectory):
    proc = run_main(
        [
            *_common(tmp_path, traj_cache),
            "action=compare",
            "compare.methods=[quantile]",
            "+compare.settings.quantile.q=1.0",  # the largest value of each element
            "compare.register=true",
            "registry.name=outside",
        ],
        cwd=_user_dir(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert [m["method"] for m in out["methods"]] == ["quantile"] and out["methods"][0]["weights"] is None
    assert "quantile" in proc.stdout[proc.stdout.index("compare on ") :]  # a row of the printed table
    assert "| quantile |" in (tmp_path / "run" / "compare.md").read_text()
    # what compare evaluated and registered is the method with q=1: each element's largest value over the
    # compared checkpoints (all three of the tiny trajectory), not an average and not the default median
    assert out["registered_model"] is not None
    sources = [_tensors(c) for c in tiny_trajectory.checkpoints]
    written = _tensors(Path(out["output_dir"]))
    assert written
    floating = 0
    for key, tensor in written.items():
        if not tensor.is_floating_point():
            continue
        floating += 1
        expected = torch.stack([s[key] for s in sources]).amax(0)
        assert tensor.equal(expected.to(tensor.dtype)), key
    assert floating


def test_a_search_refuses_a_method_that_makes_its_own_weights(tmp_path):
    proc = run_main(["merge=fisher", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: merge.method=fisher makes its own weights"), line


def test_an_unknown_merge_method_is_one_line_before_anything_runs(tmp_path):
    proc = run_main(["merge.method=pik", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: merge.method='pik' is not a known merge method")


def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path):
    proc = run_main(["plugins=[no_such_module]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: plugins[0]: cannot import 'no_such_module'")
