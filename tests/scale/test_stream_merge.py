"""The streaming writer and memory-mapped reads: bounded memory, zero copies, laziness, failure paths."""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ckptmerge.checkpoints import CheckpointReader, CheckpointSet, pages
from ckptmerge.checkpoints import reader as reader_mod
from ckptmerge.checkpoints import stream as stream_mod
from ckptmerge.checkpoints.writer import write_merged
from ckptmerge.errors import CheckpointError
from ckptmerge.merge import linear_merge
from tests.conftest import REPO
from tests.scale.synthetic import NeoXShape, write_neox_checkpoint

TINY = NeoXShape(hidden=64, layers=2, heads=4, intermediate=256, vocab=96, max_pos=64)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return [write_neox_checkpoint(root / f"s{i}", TINY, torch.float16, seed=i, shard_bytes=40_000) for i in (1, 2)]


def _readers(folders):
    return [CheckpointReader(f) for f in folders]


def test_output_is_standard_safetensors_with_index_and_progress(tmp_path, pair, capsys, monkeypatch):
    from safetensors.torch import load_file

    import ckptmerge.progress

    monkeypatch.setattr(ckptmerge.progress, "interactive", lambda: True)  # a terminal: the bar is drawn

    out = write_merged(
        _readers(pair),
        pair[1],
        [0.4, 0.6],
        tmp_path / "m",
        linear_merge,
        30_000,
        out_dtype=torch.float32,
        chunk_elems=777,
        progress=True,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("*.safetensors"))
    assert len(files) > 2 and sorted(set(index["weight_map"].values())) == [f.name for f in files]
    assert index["metadata"]["total_size"] == sum(CheckpointReader(out).meta()[k].nbytes for k in index["weight_map"])
    srcs = _readers(pair)
    for f in files:  # safetensors' own loader agrees, every tensor aligned to its element size
        for key, t in load_file(str(f)).items():
            assert t.data_ptr() % t.element_size() == 0 or t.numel() <= 1
            expect = linear_merge(
                [r.get(key) for r in srcs], [0.4, 0.6], torch.float32 if t.is_floating_point() else None
            )
            assert torch.equal(t, expect), key
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    err = capsys.readouterr().err
    assert "tensors" in err and "B/s" in err
    # in a log (no terminal) the same merge draws no bar
    monkeypatch.setattr(ckptmerge.progress, "interactive", lambda: False)
    write_merged(_readers(pair), pair[1], [0.4, 0.6], tmp_path / "m2", linear_merge, 30_000, progress=True)
    assert "B/s" not in capsys.readouterr().err


def test_bin_inputs_are_memory_mapped_and_merge_the_same(tmp_path, pair):
    bins = [write_neox_checkpoint(tmp_path / f"b{i}", TINY, torch.float16, seed=i, fmt="bin") for i in (1, 2)]
    rb = _readers(bins)
    assert rb[0].format == "bin"
    assert pages.is_file_mapped(rb[0].get("gpt_neox.embed_in.weight"))
    a = write_merged(rb, bins[1], [0.3, 0.7], tmp_path / "from_bin", linear_merge, 10**9, chunk_elems=500)
    b = write_merged(_readers(pair), pair[1], [0.3, 0.7], tmp_path / "from_st", linear_merge, 10**9)
    ra, rs = CheckpointReader(a), CheckpointReader(b)
    for key in rs.keys():
        assert torch.equal(ra.get(key), rs.get(key)), key


def test_safetensors_views_are_zero_copy_and_private(tmp_path, pair):
    r = CheckpointReader(pair[0])
    key = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    t = r.get(key)
    assert pages.is_file_mapped(t)
    assert r.get(key).data_ptr() == t.data_ptr()  # the same mapped bytes, not a fresh copy
    before = (pair[0] / r.byte_range(key)[0].name).read_bytes()
    t.add_(1.0)  # copy-on-write: the file never changes
    assert (pair[0] / r.byte_range(key)[0].name).read_bytes() == before
    r.close()
    assert not pages.is_file_mapped(t)  # a closed reader's maps are never paged out by us


def test_metadata_checks_read_no_tensor_data(tmp_path, pair, monkeypatch):
    def no_map(*a, **k):
        raise AssertionError("tensor data was mapped for a metadata check")

    monkeypatch.setattr(reader_mod.mmap, "mmap", no_map)
    cset = CheckpointSet.from_refs([str(p) for p in pair])
    assert cset.meta()["embed_out.weight"].shape == (TINY.vocab, TINY.hidden)
    assert all(c.identity()["fingerprint"] for c in cset.checkpoints)


def test_stream_failures_leave_nothing(tmp_path, pair, monkeypatch):
    def nan_chunks(tensors, weights, out_dtype=None):
        out = linear_merge(tensors, weights, out_dtype)
        return out.fill_(float("nan")) if out.numel() > 5000 else out

    nan_chunks.elementwise = True
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        write_merged(_readers(pair), pair[1], [0.5, 0.5], tmp_path / "nan", nan_chunks, 10**9, chunk_elems=6000)

    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_disk(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(stream_mod.os, "pwrite", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        write_merged(_readers(pair), pair[1], [0.5, 0.5], tmp_path / "full", linear_merge, 10**9, chunk_elems=1000)
    monkeypatch.undo()

    other = write_neox_checkpoint(tmp_path / "wide", NeoXShape(96, 2, 4, 256, 96, 64), torch.float16, seed=3)
    with pytest.raises(CheckpointError, match="is \\[96, 96\\]|newest has"):
        write_merged(_readers([other, pair[1]]), pair[1], [0.5, 0.5], tmp_path / "shape", linear_merge, 10**9)
    assert list(tmp_path.iterdir()) == [tmp_path / "wide"]


def test_overwrite_replaces_an_existing_target_only_when_asked(tmp_path, pair):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("x")
    with pytest.raises(CheckpointError, match="already exists"):
        write_merged(_readers(pair), pair[1], [0.5, 0.5], target, linear_merge, 10**9)
    write_merged(_readers(pair), pair[1], [0.5, 0.5], target, linear_merge, 10**9, overwrite=True, reread=True)
    assert not (target / "old.txt").exists() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resident_trials_merge_in_chunks_from_the_maps_without_io(tmp_path, monkeypatch):
    from ckptmerge.resident import SingleResidentModel
    from ckptmerge.resident import base as resident_mod

    folders = [write_neox_checkpoint(tmp_path / f"r{i}", TINY, torch.float32, seed=i) for i in (1, 2, 3)]
    cset = CheckpointSet.from_refs([str(f) for f in folders])
    res = SingleResidentModel(cset)
    assert all(pages.is_file_mapped(s) for _, _, srcs in res._targets for s in srcs)
    monkeypatch.setattr(resident_mod, "CHUNK_ELEMS", 1000)  # the embedding spans several chunks

    def no_io(*a, **k):
        raise AssertionError("a trial touched the file system")

    for mod, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "read"), (os, "pread")):
        monkeypatch.setattr(mod, name, no_io)
    res.apply([0.2, 0.3, 0.5])
    monkeypatch.undo()
    sd, src = res.model.state_dict(), [CheckpointReader(f) for f in folders]
    for key in ("gpt_neox.embed_in.weight", "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"):
        assert torch.equal(sd[key], linear_merge([r.get(key) for r in src], [0.2, 0.3, 0.5]))


_RSS_CHILD = textwrap.dedent("""
    import sys, json, torch
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from ckptmerge.checkpoints import CheckpointReader, pages
    from ckptmerge.checkpoints.writer import write_merged
    from ckptmerge.merge import linear_merge
    # Warm up allocator, threads and imports on a throwaway merge of other files, then measure.
    warm = [CheckpointReader(Path(p)) for p in {warm!r}]
    write_merged(warm, Path({warm!r}[1]), [0.5, 0.5], Path({out!r} + "-warm"), linear_merge, 10**9,
                 chunk_elems=1 << 10, prefetch_bytes=1 << 20, write_bytes=1 << 20)
    srcs = [CheckpointReader(Path(p)) for p in {srcs!r}]
    base = pages.rss_bytes()[0]
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    write_merged(srcs, Path({srcs!r}[1]), [0.3, 0.7], Path({out!r}), linear_merge, 20_000_000,
                 chunk_elems=1 << 18, prefetch_bytes=8 << 20, write_bytes=8 << 20)
    print(json.dumps({{"base": base, "peak": pages.rss_bytes()[1]}}))
""")


def test_peak_memory_stays_near_the_budget_not_the_model_size(tmp_path, pair):
    shape = NeoXShape(hidden=1024, layers=2, heads=8, intermediate=4096, vocab=8192, max_pos=256)
    srcs = [
        str(write_neox_checkpoint(tmp_path / f"m{i}", shape, torch.float16, seed=i, shard_bytes=30_000_000))
        for i in (1, 2)
    ]
    total = sum(CheckpointReader(s).nbytes() for s in srcs)  # ~170 MB of inputs, ~85 MB written
    code = _RSS_CHILD.format(
        repo=str(REPO / "src"), srcs=srcs, warm=[str(p) for p in pair], out=str(tmp_path / "merged")
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    grew = m["peak"] - m["base"]
    # Budgets: 8 MB prefetched + 8 MB queued for writing + one 1 MB chunk of fp32 temporaries.
    assert grew < 40e6 and grew < total / 4, f"peak RSS grew {grew / 1e6:.0f} MB merging {total / 1e6:.0f} MB"
    merged = CheckpointReader(tmp_path / "merged")
    assert merged.nbytes() * 2 == total
