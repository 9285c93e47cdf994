"""Bad input: one clear line naming the problem, exit status 2, nothing registered, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import run_main
from tests.helpers import tiny_neox

pytestmark = pytest.mark.slow


def _variant(src, dst, edit):
    """A copy of checkpoint ``src`` with one thing broken by ``edit(folder)``."""
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _unsafe_bin(folder):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "model.safetensors").unlink()
    torch.save({"w": Evil()}, folder / "pytorch_model.bin")  # loading this unsafely would call print()


def _other_tokenizer(folder):
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    k1, k2 = list(vocab)[300], list(vocab)[301]
    vocab[k1], vocab[k2] = vocab[k2], vocab[k1]
    (folder / "tokenizer.json").write_text(json.dumps(tok))


def _remote_code(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(cfg))


def _cases(traj, tmp):
    a, b = traj.checkpoints[-2], traj.checkpoints[-1]
    other = tiny_neox(tmp / "other", hidden=16)
    local = ["model=local", "eval.tasks=[ckptmerge_dev_bpb]", f"eval.include_path={traj.tasks_dir}"]
    no_weights = tmp / "noweights"
    no_weights.mkdir()
    shutil.copy(b / "config.json", no_weights / "config.json")
    exists = tmp / "exists"
    exists.mkdir()
    merge = ["action=merge", "model=local", f"model.checkpoints=[{a},{b}]"]
    return {
        "folder without weights": (local + [f"model.checkpoints=[{a},{no_weights}]"], "no weights in"),
        "truncated safetensors": (
            local + [f"model.checkpoints=[{a},{_variant(b, tmp / 't', _truncate)}]"],
            "truncated",
        ),
        "unsafe .bin": (
            local + [f"model.checkpoints=[{a},{_variant(b, tmp / 'u', _unsafe_bin)}]"],
            "unsafe unpickling",
        ),
        "different dtypes": (
            local + [f"model.checkpoints=[{tiny_neox(tmp / 'f32')},{tiny_neox(tmp / 'f16', dtype=torch.float16)}]"],
            "dtype",
        ),
        "tokenizer mismatch": (
            local + [f"model.checkpoints=[{a},{_variant(b, tmp / 'k', _other_tokenizer)}]"],
            "different tokenizers",
        ),
        "single checkpoint": (local + [f"model.checkpoints=[{b}]"], "model.checkpoints needs at least 2"),
        "weights not summing to 1": (merge + ["merge.weights=[0.5,0.6]", f"merge.output_dir={tmp / 'o'}"], "sum to 1"),
        "negative weight": (merge + ["merge.weights=[1.5,-0.5]", f"merge.output_dir={tmp / 'o'}"], "negative"),
        "unknown merge method": (
            local + [f"model.checkpoints=[{a},{b}]", "merge.method=lienar"],
            "did you mean 'linear'",
        ),
        "unknown config group option": (["model=pythia-7b"], "model=pythia-7b is not a config"),
        "former compare key": (["action=compare", "compare.lawa_k=2"], "+compare.settings.lawa.k=VALUE"),
        "output folder exists": (merge + ["merge.weights=[0.5,0.5]", f"merge.output_dir={exists}"], "already exists"),
        # copies: were the check missing, overwrite=true would replace the input checkpoint itself
        "output is an input checkpoint": (
            [
                "action=merge",
                "model=local",
                f"model.checkpoints=[{_variant(a, tmp / 'ia', lambda f: None)},"
                f"{_variant(b, tmp / 'ib', lambda f: None)}]",
                "merge.weights=[0.5,0.5]",
                f"merge.output_dir={tmp / 'ib'}",
                "merge.overwrite=true",
            ],
            "is the input checkpoint",
        ),
        "registry name rejected": (
            local + [f"model.checkpoints=[{a},{b}]", "registry.name=team/merge"],
            "registry.name",
        ),
        "remote code without trust": (
            local
            + [f"model.checkpoints=[{_variant(a, tmp / 'r1', _remote_code)},{_variant(b, tmp / 'r2', _remote_code)}]"],
            "trust_remote_code",
        ),
        "missing path": (local + [f"model.checkpoints=[{tmp / 'nope'},{b}]"], "does not exist"),
        "mismatched checkpoints": (local + [f"model.checkpoints=[{other},{b}]"], "different architectures"),
        "budget below 2": (local + [f"model.checkpoints=[{a},{b}]", "search.budget=1"], "search.budget"),
        "alpha out of range": (local + [f"model.checkpoints=[{a},{b}]", "search.alpha=1.0"], "search.alpha"),
        "unknown task": (
            [
                "model=local",
                f"model.checkpoints=[{a},{b}]",
                "eval.tasks=[ckptmerge_dev_bpx]",
                f"eval.include_path={traj.tasks_dir}",
            ],
            "did you mean 'ckptmerge_dev_bpb'",
        ),
        "unknown metric": (
            local + [f"model.checkpoints=[{a},{b}]", "eval.metrics={ckptmerge_dev_bpb: acc}"],
            "eval.metrics.ckptmerge_dev_bpb",
        ),
        "test split as dev": (
            [
                "model=local",
                f"model.checkpoints=[{a},{b}]",
                "eval.tasks=[ckptmerge_test_bpb]",
                f"eval.include_path={traj.tasks_dir}",
            ],
            "test split",
        ),
        "unreachable tracking": (
            local + [f"model.checkpoints=[{a},{b}]", "tracking.uri=http://127.0.0.1:9"],
            "tracking.uri=http://127.0.0.1:9",
        ),
        "local without checkpoints": (["model=local"], "model.checkpoints"),
        "deepspeed config missing": (
            local
            + [f"model.checkpoints=[{a},{b}]", "runtime=deepspeed", f"runtime.deepspeed_config={tmp / 'ds.json'}"],
            "runtime.deepspeed_config does not exist",
        ),
        "pilot under deepspeed": (
            ["action=pilot", "runtime=deepspeed"],
            "action=pilot does not run under runtime=deepspeed",
        ),
    }


CASES = [
    "missing path",
    "folder without weights",
    "truncated safetensors",
    "unsafe .bin",
    "mismatched checkpoints",
    "different dtypes",
    "tokenizer mismatch",
    "single checkpoint",
    "weights not summing to 1",
    "negative weight",
    "budget below 2",
    "alpha out of range",
    "unknown task",
    "unknown metric",
    "unknown merge method",
    "unknown config group option",
    "former compare key",
    "test split as dev",
    "output folder exists",
    "output is an input checkpoint",
    "unreachable tracking",
    "registry name rejected",
    "remote code without trust",
    "local without checkpoints",
    "deepspeed config missing",
    "pilot under deepspeed",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly(case, tmp_path, tiny_trajectory):
    args, expected = _cases(tiny_trajectory, tmp_path)[case]
    db = tmp_path / "mlflow.db"
    has_uri = any(a.startswith("tracking.uri=") for a in args)
    args = args + ([] if has_uri else [f"tracking.uri=sqlite:///{db}"]) + [f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_main(args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert expected in lines[0]
    assert "this must never run" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run" / "merged").exists()
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "run" / "result.json").exists()
    if db.exists():
        assert MlflowClient(f"sqlite:///{db}").search_registered_models() == []
