"""mergekit interop through both CLIs: the ``mergekit_config.yml`` a merged folder carries makes the real
``mergekit-yaml`` write the same tensors (within one ulp), and ``action=merge merge.mergekit_config=``
reads a mergekit YAML.

Inputs are the Pythia-shaped synthetic checkpoints of the oracle (with the buffers mergekit 0.1.5's
GPT-NeoX definition requires: it refuses checkpoints saved without them, as transformers 5 saves them,
whatever the config). Both mergekit runs start in parallel (start-up dominates); the module takes ~30 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ckptmerge.checkpoints import CheckpointReader
from tests.conftest import MAIN
from tests.scale.synthetic import NeoXShape, write_neox_checkpoint
from tests.scale.test_mergekit_oracle import ulp_distance

SHAPE = NeoXShape(hidden=64, layers=2, heads=4, intermediate=256, vocab=96, max_pos=64)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# name: (input dtype, weights, merge.dtype)
CASES = {"fp16": (torch.float16, [0.35, 0.65], "auto"), "fp32_to_bf16": (torch.float32, [0.3, 0.7], "bfloat16")}


def _mergekit_yaml() -> str:
    exe = Path(sys.executable).with_name("mergekit-yaml")
    found = str(exe) if exe.is_file() else shutil.which("mergekit-yaml")
    assert found, "mergekit is a dev dependency: pip install -e '.[dev]'"
    return found


def _main(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MAIN), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def _merge(srcs: list[Path], weights: list[float], out: Path, dtype: str, cwd: Path) -> None:
    proc = _main(
        [
            "action=merge",
            "model=local",
            f"model.checkpoints=[{','.join(map(str, srcs))}]",
            f"merge.weights=[{','.join(map(str, weights))}]",
            f"merge.dtype={dtype}",
            f"merge.output_dir={out}",
            "merge.allow_nonfinite=true",
            "merge.shard_size=50KB",
            f"hydra.run.dir={cwd / 'run'}",
        ],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """Each case merged by ckptmerge, then by mergekit-yaml from the config in ckptmerge's folder."""
    root = tmp_path_factory.mktemp("mkconfig")
    out = {}
    for name, (dtype, weights, out_dtype) in CASES.items():
        srcs = [
            write_neox_checkpoint(root / name / f"step{i + 1}", SHAPE, dtype, seed=7 * i + 3, shard_bytes=60_000)
            for i in range(len(weights))
        ]
        _merge(srcs, weights, root / name / "ours", out_dtype, root / name)
        out[name] = (root / name / "ours", root / name / "mergekit", srcs)
    procs = {
        name: subprocess.Popen(
            [_mergekit_yaml(), str(ours / "mergekit_config.yml"), str(theirs), "--no-copy-tokenizer", "--quiet"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (ours, theirs, _) in out.items()
    }
    for name, p in procs.items():
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"mergekit-yaml failed on {name}'s config:\n{log[-3000:]}"
    return root, out


@pytest.mark.parametrize("case", list(CASES))
def test_mergekit_reproduces_the_merge_from_the_emitted_config(merged, case):
    _, out = merged
    ours, theirs, srcs = out[case]
    config = yaml.safe_load((ours / "mergekit_config.yml").read_text())
    assert [m["model"] for m in config["models"]] == [str(s.resolve()) for s in srcs]
    assert [m["parameters"]["weight"] for m in config["models"]] == CASES[case][1]
    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    assert set(a.keys()) == set(b.keys())
    expected = CASES[case][0] if CASES[case][2] == "auto" else getattr(torch, CASES[case][2])
    worst, floats = 0, 0
    for key in b.keys():
        x, y = a.get(key), b.get(key)
        assert x.shape == y.shape, key
        if not (x.is_floating_point() and y.is_floating_point()):
            # mergekit casts every tensor when told a dtype (the bool causal mask becomes 1.0/0.0); we keep it.
            assert torch.equal(x.to(torch.float32), y.to(torch.float32)), key
            continue
        assert x.dtype == y.dtype == expected, key
        finite = torch.isfinite(x) & torch.isfinite(y)
        assert torch.equal(torch.isfinite(x), torch.isfinite(y)), key
        worst = max(worst, int(ulp_distance(x[finite], y[finite]).max()) if finite.any() else 0)
        floats += 1
    assert floats > 10 and worst <= 1, f"{case}: {worst} ulp"
    print(f"{case}: max {worst} ulp over {floats} floating tensors")


def test_merge_reads_a_mergekit_config(merged):
    """The emitted config fed back to action=merge writes the same bits; mergekit's default normalize
    divides by the weights' sum, so weights 1 and 3 mean 0.25 and 0.75."""
    root, out = merged
    ours, _, srcs = out["fp16"]
    again = root / "again"
    proc = _main(
        [
            "action=merge",
            f"merge.mergekit_config={ours / 'mergekit_config.yml'}",
            f"merge.output_dir={again}",
            "merge.allow_nonfinite=true",
            f"hydra.run.dir={root / 'run_again'}",
        ],
        root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = CheckpointReader(ours), CheckpointReader(again)
    assert all(torch.equal(a.get(k), b.get(k)) for k in a.keys())

    recipe = root / "normalized.yml"
    recipe.write_text(
        "merge_method: linear\ndtype: float16\nmodels:\n"
        + "".join(f"  - model: {s}\n    parameters:\n      weight: {w}\n" for s, w in zip(srcs, [1, 3]))
    )
    proc = _main(
        [
            "action=merge",
            f"merge.mergekit_config={recipe}",
            f"merge.output_dir={root / 'normalized'}",
            "merge.allow_nonfinite=true",
            f"hydra.run.dir={root / 'run_norm'}",
        ],
        root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "{'step1': 0.25, 'step2': 0.75}" in proc.stdout


def test_unsupported_mergekit_config_is_one_line(merged):
    root, out = merged
    _, _, srcs = out["fp16"]
    ties = root / "ties.yml"
    ties.write_text(
        "merge_method: ties\nbase_model: "
        + str(srcs[0])
        + "\nmodels:\n"
        + "".join(f"  - model: {s}\n    parameters:\n      weight: 0.5\n      density: 0.5\n" for s in srcs)
    )
    proc = _main(
        [
            "action=merge",
            f"merge.mergekit_config={ties}",
            f"merge.output_dir={root / 'ties'}",
            f"hydra.run.dir={root / 'run_ties'}",
        ],
        root,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines == [
        "error: merge.mergekit_config: merge_method='ties' is not supported; ckptmerge and mergekit share only 'linear'"
    ], proc.stderr[-2000:]
    assert not (root / "ties").exists()
