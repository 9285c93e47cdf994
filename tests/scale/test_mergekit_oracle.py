"""Correctness oracle: our streaming merge equals mergekit's ``linear`` merge within one ulp.

Real mergekit, run through its CLI (``mergekit-multi``: every case's recipe in one process, one start-up),
on the same Pythia-shaped
inputs (with the ``attention.bias``/``masked_bias``/``inv_freq`` buffers real Pythia checkpoints carry,
which mergekit's GPT-NeoX architecture requires): fp32, fp16 and bf16, sharded inputs, 2 and 3
checkpoints, and an output dtype different from the inputs'. Our side runs through the library with
tiny chunks (every chunk boundary exercised) and, for one case, through ``src/main.py action=merge``,
in parallel with mergekit (start-up dominates both), so the module takes ~15 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptmerge.checkpoints import CheckpointReader
from ckptmerge.checkpoints.writer import write_merged
from ckptmerge.merge import linear_merge
from tests.conftest import MAIN
from tests.scale.synthetic import NeoXShape, write_neox_checkpoint

SHAPE = NeoXShape(hidden=64, layers=2, heads=4, intermediate=256, vocab=96, max_pos=64)
# name: (input dtype, weights, our output dtype or None, mergekit config extras)
CASES = {
    "fp32_k2": (torch.float32, [0.35, 0.65], None, ""),
    "fp16_k3_cli": (torch.float16, [0.2, 0.3, 0.5], None, ""),
    "bf16_k2": (torch.bfloat16, [0.6, 0.4], None, ""),
    # mergekit casts inputs to fp32 first (exact), merges in fp32 and writes bf16, as we do.
    "fp16_to_bf16": (torch.float16, [0.25, 0.75], torch.bfloat16, "dtype: float32\nout_dtype: bfloat16\n"),
}


def _mergekit_multi() -> str:
    exe = Path(sys.executable).with_name("mergekit-multi")
    found = str(exe) if exe.is_file() else shutil.which("mergekit-multi")
    assert found, "mergekit is a dev dependency: pip install -e '.[dev]'"
    return found


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Representable values between ``a`` and ``b`` (same float dtype), elementwise; 0 means equal bits."""
    itype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    lo = -(1 << (8 * a.element_size() - 1))

    def ordered(t: torch.Tensor) -> torch.Tensor:
        i = t.reshape(-1).view(itype).to(torch.int64)
        return torch.where(i < 0, lo - i, i)  # sign-magnitude -> monotonic integers (-0 == +0)

    return (ordered(a) - ordered(b)).abs()


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """Inputs for every case; mergekit and our CLI started in parallel; our library merges meanwhile."""
    root = tmp_path_factory.mktemp("oracle")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs, out, recipes = {}, {}, []
    sources = {
        name: [
            write_neox_checkpoint(root / name / f"step{i}", SHAPE, c[0], seed=10 * i + 1, shard_bytes=60_000)
            for i in range(len(c[1]))
        ]
        for name, c in CASES.items()
    }
    for name, (_dtype, weights, _out_dtype, extra) in CASES.items():
        recipes.append(
            f"name: {name}\nmerge_method: linear\n"
            + extra
            + "models:\n"
            + "".join(f"  - model: {s}\n    parameters:\n      weight: {w}\n" for s, w in zip(sources[name], weights))
        )
    (root / "mergekit.yml").write_text("---\n".join(recipes))
    procs["all", "mergekit"] = subprocess.Popen(
        [
            _mergekit_multi(),
            str(root / "mergekit.yml"),
            "-I",
            str(root / "mergekit"),
            "--no-copy-tokenizer",
            "--no-write-model-card",
            "--quiet",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for name, (_dtype, weights, out_dtype, _extra) in CASES.items():
        srcs = sources[name]
        assert all(len(list(s.glob("*.safetensors"))) > 1 for s in srcs)  # sharded inputs
        ours = root / name / "ours"
        if name.endswith("_cli"):
            args = [
                f"model.checkpoints=[{','.join(str(s) for s in srcs)}]",
                "model=local",
                "action=merge",
                f"merge.weights=[{','.join(map(str, weights))}]",
                f"merge.output_dir={ours}",
                "merge.shard_size=50KB",
                f"hydra.run.dir={root / name / 'run'}",
            ]
            procs[name, "ours"] = subprocess.Popen(
                [sys.executable, str(MAIN), *args],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        else:
            write_merged(
                [CheckpointReader(s) for s in srcs],
                srcs[-1],
                weights,
                ours,
                linear_merge,
                50_000,
                out_dtype=out_dtype,
                chunk_elems=1000,
            )
        out[name] = (ours, root / "mergekit" / name, srcs)
    for (name, who), p in procs.items():
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"{who} failed on {name}:\n{log[-3000:]}"
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_equals_mergekit_linear_within_one_ulp(merged, case):
    ours, theirs, _ = merged[case]
    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    assert set(a.keys()) == set(b.keys())
    assert len(list(ours.glob("*.safetensors"))) > 1 and (ours / "model.safetensors.index.json").is_file()
    worst = 0
    for key in b.keys():
        x, y = a.get(key), b.get(key)
        assert x.shape == y.shape, key
        if not y.is_floating_point() or not x.is_floating_point():
            # mergekit casts every tensor when told a dtype (the bool causal mask becomes 1.0/0.0); we keep it.
            assert torch.equal(x.to(torch.float32), y.to(torch.float32)), key
            continue
        assert x.dtype == y.dtype == (CASES[case][2] or CASES[case][0]), key
        worst = max(worst, int(ulp_distance(x, y).max()))
    assert worst <= 1


def test_outputs_load_and_keep_source_buffers(merged):
    from transformers import AutoModelForCausalLM

    ours, _, srcs = merged["fp16_k3_cli"]
    model = AutoModelForCausalLM.from_pretrained(ours)
    assert sum(p.numel() for p in model.parameters()) > 0
    a, newest = CheckpointReader(ours), CheckpointReader(srcs[-1])
    mask = "gpt_neox.layers.0.attention.bias"
    assert a.meta()[mask].dtype == torch.bool and torch.equal(a.get(mask), newest.get(mask))
    # -1e9 in fp16 is -inf in every source; the merge keeps it instead of refusing the checkpoint.
    assert a.get("gpt_neox.layers.0.attention.masked_bias").item() == float("-inf")
    assert not any(p.name.startswith(".") for p in ours.parent.iterdir())
