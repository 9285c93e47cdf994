"""Checkpoint I/O on real files: lazy reads, compatibility checks, atomic verified writes, resident model."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ckptmerge.checkpoints import CheckpointReader, CheckpointSet
from ckptmerge.checkpoints.refs import parse_ref
from ckptmerge.checkpoints.writer import atomic_folder, write_merged
from ckptmerge.errors import CheckpointError
from ckptmerge.merge import linear_merge
from ckptmerge.resident import SingleResidentModel
from tests.helpers import tiny_neox


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return tiny_neox(root / "step1", seed=1), tiny_neox(root / "step2", seed=2)


def test_reader_single_sharded_and_bin_agree(tmp_path, pair):
    single = CheckpointReader(pair[0])
    sharded = CheckpointReader(tiny_neox(tmp_path / "sharded", seed=1, shard="20KB"))
    binf = CheckpointReader(tiny_neox(tmp_path / "bin", seed=1, safe=False))
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert binf.format == "bin" and sharded.format == "safetensors"
    assert set(single.keys()) == set(sharded.keys()) == set(binf.keys())
    for k in single.keys():
        assert torch.equal(single.get(k), sharded.get(k))
        assert torch.equal(single.get(k), binf.get(k))
    assert single.meta()[k].nbytes == single.get(k).numel() * single.get(k).element_size()


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(CheckpointError, match="unsafe unpickling|not a readable torch checkpoint"):
        CheckpointReader(folder).keys()


def test_truncated_safetensors_is_caught(tmp_path, pair):
    folder = tmp_path / "trunc"
    shutil.copytree(pair[0], folder)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        CheckpointReader(folder)


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights"):
        CheckpointReader(tmp_path / "empty")


def test_set_refuses_mismatches(tmp_path, pair):
    other = tiny_neox(tmp_path / "wide", seed=3, hidden=32)
    with pytest.raises(CheckpointError, match="different architectures"):
        CheckpointSet.from_refs([str(pair[0]), str(other)])
    half = tiny_neox(tmp_path / "half", seed=3, dtype=torch.float16)
    with pytest.raises(CheckpointError, match="dtype"):
        CheckpointSet.from_refs([str(pair[0]), str(half)])
    with pytest.raises(CheckpointError, match="does not exist"):
        CheckpointSet.from_refs([str(pair[0]), str(tmp_path / "nope")])
    cset = CheckpointSet.from_refs([str(p) for p in pair])
    assert cset.names == ["step1", "step2"]


def test_refs():
    r = parse_ref("EleutherAI/pythia-70m@step1000")
    assert r.is_hub and r.repo == "EleutherAI/pythia-70m" and r.revision == "step1000" and r.name == "step1000"
    assert not parse_ref("./some/local").is_hub


def test_remote_code_needs_trust(tmp_path, pair):
    import json

    folder = tmp_path / "remote"
    shutil.copytree(pair[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (folder / "config.json").write_text(json.dumps(cfg))
    folder2 = tmp_path / "remote2"
    shutil.copytree(folder, folder2)
    with pytest.raises(CheckpointError, match="trust_remote_code"):
        CheckpointSet.from_refs([str(folder), str(folder2)])


def test_atomic_folder_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        with atomic_folder(target):
            pass


def test_write_merged_is_the_linear_merge_and_loads(tmp_path, pair):
    from transformers import AutoModelForCausalLM

    readers = [CheckpointReader(p) for p in pair]
    out = write_merged(readers, pair[1], [0.3, 0.7], tmp_path / "merged", linear_merge, shard_bytes=10_000)
    assert (out / "model.safetensors.index.json").is_file()
    merged = CheckpointReader(out)
    for k in readers[0].keys():
        assert torch.equal(merged.get(k), linear_merge([r.get(k) for r in readers], [0.3, 0.7]))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_write_merged_refuses_nan(tmp_path, pair):
    def nan_merge(tensors, weights, out_dtype=None):
        return torch.full_like(tensors[0], float("nan"), dtype=out_dtype or tensors[0].dtype)

    readers = [CheckpointReader(p) for p in pair]
    with pytest.raises(CheckpointError, match="NaN"):
        write_merged(readers, pair[1], [0.5, 0.5], tmp_path / "bad", nan_merge, shard_bytes=10**9)
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []


def test_resident_model_merges_in_place_without_rereading(tmp_path, pair):
    copies = [shutil.copytree(p, tmp_path / p.name) for p in pair]
    cset = CheckpointSet.from_refs([str(p) for p in copies])
    res = SingleResidentModel(cset)
    newest = load_file(str(copies[1] / "model.safetensors"))
    oldest = load_file(str(copies[0] / "model.safetensors"))
    for p in copies:  # trials must not touch the disk: remove the files
        (p / "model.safetensors").unlink()
    ptrs = {k: v.data_ptr() for k, v in res.model.state_dict().items()}
    res.apply([0.0, 1.0])  # λ=1 reproduces the newest exactly
    sd = res.model.state_dict()
    name = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert torch.equal(sd[name], newest[name])
    assert torch.equal(sd["lm_head.weight"], newest["embed_out.weight"])  # renamed by transformers 5
    res.apply([0.25, 0.75])
    sd = res.model.state_dict()
    assert torch.equal(sd[name], linear_merge([oldest[name], newest[name]], [0.25, 0.75]))
    assert torch.equal(
        sd["lm_head.weight"], linear_merge([oldest["embed_out.weight"], newest["embed_out.weight"]], [0.25, 0.75])
    )
    assert {k: v.data_ptr() for k, v in sd.items()} == ptrs
