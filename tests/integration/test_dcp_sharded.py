"""A Distributed Checkpoint sharded over two gloo ranks, as FSDP2 and torchtitan write one (every weight a
DTensor sharded on dim 0, each rank writing its own ``__R_0.distcp``): read bit for bit, merged as the
transformers folders merge, and action=pilot over it scores what it scores over the folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet, ReadOptions
from ckptmerge.checkpoints.reader import CheckpointReader
from tests.conftest import run_main
from tests.native_writers import write_dcp_sharded

pytestmark = pytest.mark.slow

# The trajectory's files name the output layer embed_out; transformers 5's model names it lm_head.
FILE_NAME = {"embed_out.weight": "lm_head.weight"}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_trajectory) -> dict:
    tmp = tmp_path_factory.mktemp("sharded")
    hf = list(tiny_trajectory.checkpoints[-2:])
    dcp = [write_dcp_sharded(f, tmp / "dcp" / f.name) for f in hf]
    return {"tmp": tmp, "hf": hf, "dcp": dcp}


def test_two_ranks_wrote_shards_that_read_back_bit_for_bit(sharded):
    folder, hf = sharded["dcp"][-1], sharded["hf"][-1]
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    md = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    chunks = {k: len(v.chunks) for k, v in md.items() if k.startswith("model.") and hasattr(v, "chunks")}
    assert set(chunks.values()) == {2}  # every model weight in two shards, one per rank
    cset = CheckpointSet.from_refs([str(p) for p in sharded["dcp"]], options=ReadOptions(config=str(hf)))
    reader, want = cset.checkpoints[-1].reader, CheckpointReader(hf)
    assert reader.format == "dcp" and len(reader.keys()) == len(want.keys())
    for key in want.keys():
        got = reader.get(FILE_NAME.get(key, key))
        assert got.dtype == want.meta()[key].dtype and torch.equal(got, want.get(key)), key


def _run(sharded: dict, name: str, folders: list[Path], *args: str):
    tmp = sharded["tmp"]
    proc = run_main(
        [
            "model=local",
            f"model.checkpoints=[{','.join(map(str, folders))}]",
            f"model.config={sharded['hf'][-1]}",
            f"hydra.run.dir={tmp / name}",
            *args,
        ],
        cwd=tmp,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / name


def test_merge_over_sharded_dcp_is_bit_for_bit_the_transformers_merge(sharded):
    tmp = sharded["tmp"]
    outs = {}
    for fmt in ("hf", "dcp"):
        out = tmp / f"merged_{fmt}"
        _run(
            sharded, f"merge_{fmt}", sharded[fmt], "action=merge", "merge.weights=[0.3,0.7]", f"merge.output_dir={out}"
        )
        outs[fmt] = load_file(str(out / "model.safetensors"))
    assert len(outs["dcp"]) == len(outs["hf"])
    for key, t in outs["dcp"].items():
        ref = outs["hf"][key if key in outs["hf"] else "embed_out.weight"]
        assert t.dtype == ref.dtype and torch.equal(t, ref), key


def test_pilot_over_sharded_dcp_scores_what_it_scores_over_the_folders(sharded, tiny_trajectory):
    rows = {}
    for fmt in ("hf", "dcp"):
        run = _run(
            sharded,
            f"pilot_{fmt}",
            sharded[fmt],
            "action=pilot",
            "eval.tasks=[ckptmerge_dev_bpb]",
            f"eval.include_path={tiny_trajectory.tasks_dir}",
            "eval.limit=8",
            f"tracking.uri=sqlite:///{sharded['tmp'] / (fmt + '.db')}",
        )
        rows[fmt] = [(r["objective"], r["gain"]) for r in csv.DictReader((run / "pilot.csv").open())]
        assert json.loads((run / "result.json").read_text())["action"] == "pilot"
    assert len(rows["dcp"]) == 1 and rows["dcp"] == rows["hf"]
