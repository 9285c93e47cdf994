"""The embedded trajectory: real training, caching, determinism, disjoint splits, lm-eval tasks."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptmerge.errors import ConfigError
from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir
from ckptmerge.trajectory import build as build_module
from ckptmerge.trajectory.tasks import TASK_FILES, read_jsonl, split_for_choice

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SPEC = TrajectorySpec.tiny()
ALL_TASKS = (
    "ckptmerge_dev_bpb", "ckptmerge_dev_mc", "ckptmerge_test_bpb", "ckptmerge_test_mc", "ckptmerge_test_ood_bpb",
)  # fmt: skip


@pytest.fixture(scope="session")
def traj(tiny_trajectory):
    """The session's tiny trajectory (built by tests/conftest.py)."""
    return tiny_trajectory


@pytest.fixture(scope="session")
def fresh_twin(tmp_path_factory):
    """The same spec built again in a fresh cache that holds debris of a killed build."""
    cache = tmp_path_factory.mktemp("twin")
    fingerprint = SPEC.fingerprint()
    stale = cache / f".{fingerprint}.tmp-999999-deadbeef"
    (stale / "checkpoints").mkdir(parents=True)
    (cache / fingerprint / "checkpoints").mkdir(parents=True)  # a target without trajectory.json
    rng_before = torch.random.get_rng_state()
    twin = build_trajectory(SPEC, cache, progress=False)
    return twin, stale, torch.equal(rng_before, torch.random.get_rng_state())


@pytest.fixture(scope="session")
def other_seed(tmp_path_factory):
    return build_trajectory(dataclasses.replace(SPEC, seed=1), tmp_path_factory.mktemp("seed1"), progress=False)


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def _dev_loss(checkpoint: Path, dev_texts: list[str]) -> float:
    """Mean next-token loss over dev docs, each after the end-of-text token as in training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    n_positions = model.config.max_position_embeddings
    total, count = 0.0, 0
    with torch.no_grad():
        for text in dev_texts:
            ids = [tok.eos_token_id] + tok(text)["input_ids"][: n_positions - 1]
            batch = torch.tensor([ids])
            loss = model(input_ids=batch, labels=batch).loss.item()
            total += loss * (len(ids) - 1)
            count += len(ids) - 1
    return total / count


def test_spec_fingerprint_and_validation():
    assert SPEC.fingerprint() == TrajectorySpec.tiny().fingerprint()
    assert len(SPEC.fingerprint()) == 16 and hash(SPEC) == hash(TrajectorySpec.tiny())
    assert SPEC.fingerprint() != TrajectorySpec.default().fingerprint()
    assert SPEC.fingerprint() != dataclasses.replace(SPEC, learning_rate=4e-3).fingerprint()
    assert SPEC.fingerprint() != dataclasses.replace(SPEC, torch_threads=1).fingerprint()
    with pytest.raises(ConfigError, match="num_heads"):
        dataclasses.replace(SPEC, num_heads=3)
    with pytest.raises(ConfigError, match="save_every"):
        dataclasses.replace(SPEC, save_every=SPEC.steps + 1)
    with pytest.raises(ConfigError, match="batch_size"):
        dataclasses.replace(SPEC, batch_size=0)


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CKPTMERGE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CKPTMERGE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "ckptmerge" / "trajectories"


def test_layout_and_metadata(traj):
    assert traj.root.name == SPEC.fingerprint()
    names = [c.name for c in traj.checkpoints]
    assert names == [f"step{s:05d}" for s in range(SPEC.save_every, SPEC.steps + 1, SPEC.save_every)]
    meta = traj.metadata
    assert meta["spec"] == dataclasses.asdict(SPEC)
    assert [c["name"] for c in meta["checkpoints"]] == names
    assert all(math.isfinite(c["train_loss"]) for c in meta["checkpoints"])
    assert meta["checkpoints"][-1]["mean_train_loss"] < meta["checkpoints"][0]["mean_train_loss"]
    assert traj.max_length == SPEC.seq_len == meta["max_length"]
    assert {"corpus_s", "tokenizer_s", "train_s", "total_s"} <= set(meta["timings"])
    assert traj.calib_path.is_file() and traj.dev_tasks + traj.test_tasks == ALL_TASKS
    for name, (_, _, data_file) in TASK_FILES.items():
        text = (traj.tasks_dir / f"{name}.yaml").read_text()
        assert json.dumps(str(traj.tasks_dir / data_file)) in text  # absolute path to the final location
    assert not list(traj.root.parent.glob(".*.tmp-*"))


def test_checkpoints_load_and_differ(traj):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for checkpoint in traj.checkpoints:
        model = AutoModelForCausalLM.from_pretrained(checkpoint)
        tok = AutoTokenizer.from_pretrained(checkpoint)
        assert model.config.max_position_embeddings >= traj.max_length
        assert model.config.vocab_size == SPEC.vocab_size == len(tok)
        assert tok.bos_token_id == tok.eos_token_id is not None and tok.pad_token_id is not None
        text = "Return the value of x.\n\n    >>> f(1)\n"
        assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless round trip
    tensors = [_tensors(c) for c in traj.checkpoints]
    assert tensors[0].keys() == tensors[-1].keys()
    for earlier, later in zip(tensors, tensors[1:]):
        assert any(not torch.equal(earlier[k], later[k]) for k in earlier)


def test_training_lowers_dev_loss(traj):
    dev_texts = [row["text"] for row in read_jsonl(traj.tasks_dir / "dev.jsonl")]
    first = _dev_loss(traj.checkpoints[0], dev_texts)
    last = _dev_loss(traj.checkpoints[-1], dev_texts)
    assert last < first - 0.1, (first, last)


def test_second_build_reuses_cache(traj):
    before = {p: p.stat().st_mtime_ns for p in traj.root.rglob("*") if p.is_file()}
    started = time.perf_counter()
    again = build_trajectory(SPEC, traj.root.parent, progress=False)
    assert time.perf_counter() - started < 1.0
    assert again == traj
    assert {p: p.stat().st_mtime_ns for p in traj.root.rglob("*") if p.is_file()} == before


def test_same_seed_same_tensors_and_debris_removed(traj, fresh_twin):
    twin, stale, rng_kept = fresh_twin
    assert twin.root != traj.root and twin.root.name == traj.root.name
    assert not stale.exists()
    assert rng_kept  # building does not disturb the caller's torch random state
    for ours, theirs in zip(traj.checkpoints, twin.checkpoints, strict=True):
        a, b = _tensors(ours), _tensors(theirs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("dev.jsonl", "test_mc.jsonl", "test_ood.jsonl"):
        assert (traj.tasks_dir / name).read_bytes() == (twin.tasks_dir / name).read_bytes()


def test_other_seed_differs(traj, other_seed):
    assert other_seed.root.name != traj.root.name
    a, b = _tensors(traj.checkpoints[-1]), _tensors(other_seed.checkpoints[-1])
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert (traj.tasks_dir / "dev.jsonl").read_bytes() != (other_seed.tasks_dir / "dev.jsonl").read_bytes()


def test_splits_are_disjoint(traj):
    def texts(path: Path) -> set[str]:
        return {row["text"] for row in read_jsonl(path)}

    splits = {
        "train": texts(traj.root / "train.jsonl"),
        "calib": texts(traj.calib_path),
        "dev": texts(traj.tasks_dir / "dev.jsonl"),
        "test": texts(traj.tasks_dir / "test.jsonl"),
        "ood": texts(traj.tasks_dir / "test_ood.jsonl"),
    }
    assert (len(splits["dev"]), len(splits["test"]), len(splits["calib"])) == (
        SPEC.n_dev_docs, SPEC.n_test_docs, SPEC.n_calib_docs,
    )  # fmt: skip
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not splits[a] & splits[b], (a, b)
    # Every multiple-choice item comes from a document of its own split, and its answer follows it.
    for split in ("dev", "test"):
        docs = splits[split]
        for row in read_jsonl(traj.tasks_dir / f"{split}_mc.jsonl"):
            answer = row["choices"][row["label"]]
            assert len(set(row["choices"])) == 4
            assert any(d.startswith(row["context"]) and answer in d for d in docs)


def test_split_for_choice_cuts_at_words():
    text = ("word " * 60).strip()
    context, continuation = split_for_choice(text)
    assert 100 <= len(context) <= 180 and 40 <= len(continuation) <= 100
    assert text.startswith(context + " " + continuation)


def test_moved_cache_rewrites_task_paths(traj, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(traj.root, moved / traj.root.name)
    relocated = build_trajectory(SPEC, moved, progress=False)
    assert relocated.root == moved / traj.root.name
    assert str(relocated.tasks_dir / "dev.jsonl") in (relocated.tasks_dir / "ckptmerge_dev_bpb.yaml").read_text()


def test_concurrent_finisher_wins(tmp_path, monkeypatch):
    """If the target appears while we build (a builder without the lock), we keep theirs and drop ours."""
    spec = dataclasses.replace(SPEC, seed=123)
    target = tmp_path / spec.fingerprint()

    def fake_build(spec_, staging, final_root, progress):
        for root, marker in ((staging, "ours"), (final_root, "theirs")):
            (root / "checkpoints" / "step00030").mkdir(parents=True)
            (root / "checkpoints" / "step00030" / "config.json").write_text("{}")
            (root / "tasks").mkdir()
            meta = {
                "checkpoints": [{"name": "step00030"}],
                "max_length": 64,
                "who": marker,
                "dev_tasks": ["a"],
                "test_tasks": ["b"],
            }
            (root / "trajectory.json").write_text(json.dumps(meta))

    monkeypatch.setattr(build_module, "_build_into", fake_build)
    result = build_trajectory(spec, tmp_path, progress=False)
    assert result.root == target and result.metadata["who"] == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, f".{target.name}.lock"])


def test_lm_eval_runs_all_tasks(traj):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = traj.checkpoints[-1]
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=traj.max_length)
    manager = TaskManager(include_path=str(traj.tasks_dir))
    results = simple_evaluate(model=lm, tasks=list(ALL_TASKS), task_manager=manager, limit=None, bootstrap_iters=0)[
        "results"
    ]
    for task in ("ckptmerge_dev_bpb", "ckptmerge_test_bpb", "ckptmerge_test_ood_bpb"):
        metrics = results[task]
        assert 0 < metrics["bits_per_byte,none"] < 8
        assert math.isfinite(metrics["word_perplexity,none"]) and metrics["byte_perplexity,none"] > 1
    for task in ("ckptmerge_dev_mc", "ckptmerge_test_mc"):
        assert 0 <= results[task]["acc,none"] <= 1 and 0 <= results[task]["acc_norm,none"] <= 1
    # Code is not what the model was trained on: it must be harder than held-out docstrings.
    ood, in_domain = (results[t]["bits_per_byte,none"] for t in ("ckptmerge_test_ood_bpb", "ckptmerge_test_bpb"))
    assert ood > in_domain
