"""The tiny trajectory's checkpoints as a pretraining job writes them: ZeRO-2 and ZeRO-3 saved by DeepSpeed
itself (two gloo ranks on the CPU accelerator) and Distributed Checkpoints saved by
``torch.distributed.checkpoint``. A merge and a search over them give bit for bit the weights, and the
same result, as over the transformers folders; broken inputs are one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet, ReadOptions
from ckptmerge.checkpoints.content import training_step
from ckptmerge.checkpoints.reader import CheckpointReader
from tests.conftest import run_main
from tests.native_writers import write_dcp, write_zero

pytestmark = pytest.mark.slow

WEIGHTS = "[0.3,0.7]"
# The trajectory's files name the output layer embed_out; transformers 5's model (and so every
# checkpoint a training job saves from it) names it lm_head.
FILE_NAME = {"lm_head.weight": "embed_out.weight"}


@pytest.fixture(scope="module")
def native(tmp_path_factory, tiny_trajectory) -> dict:
    tmp = tmp_path_factory.mktemp("native")
    hf = list(tiny_trajectory.checkpoints[-2:])
    zero = write_zero((2, 3), tmp, hf)
    dcp = [write_dcp(f, tmp / "dcp" / f.name) for f in hf]
    return {"tmp": tmp, "hf": hf, "zero2": zero[2], "zero3": zero[3], "dcp": dcp, "config": hf[-1]}


def _merge(native: dict, name: str, folders: list[Path], *extra: str):
    tmp = native["tmp"]
    args = [
        "action=merge",
        "model=local",
        f"model.checkpoints=[{','.join(map(str, folders))}]",
        f"model.config={native['config']}",
        f"merge.weights={WEIGHTS}",
        f"merge.output_dir={tmp / ('out_' + name)}",
        f"hydra.run.dir={tmp / ('run_' + name)}",
        *extra,
    ]
    return run_main(args, cwd=tmp, timeout=600)


def _assert_same_tensors(merged: Path, reference: Path) -> None:
    got, want = load_file(str(merged / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert len(got) == len(want)
    for key, t in got.items():
        ref = want[key if key in want else FILE_NAME[key]]
        assert t.dtype == ref.dtype and torch.equal(t, ref), key


def test_merge_over_zero_and_dcp_is_bit_for_bit_the_transformers_merge(native):
    ref = _merge(native, "hf", native["hf"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    for fmt in ("zero2", "zero3", "dcp"):
        proc = _merge(native, fmt, native[fmt])
        assert proc.returncode == 0, proc.stderr[-3000:]
        _assert_same_tensors(native["tmp"] / f"out_{fmt}", native["tmp"] / "out_hf")
        result = json.loads((native["tmp"] / f"run_{fmt}" / "result.json").read_text())
        assert result["weights"] == json.loads((native["tmp"] / "run_hf" / "result.json").read_text())["weights"]
        # the merged folder is a transformers folder: config and tokenizer from model.config
        assert (native["tmp"] / f"out_{fmt}" / "tokenizer.json").is_file()


def test_zero_tag_parent_and_trainer_folder_are_the_same_checkpoint(native):
    """A tag folder, its parent with ``latest``, and an HF Trainer ``checkpoint-N/`` holding the tag (with
    config and tokenizer beside it, so model.config is not needed) read the same tensors."""
    run = native["zero3"][0]
    tag = run / (run / "latest").read_text().strip()
    trainer = native["tmp"] / "trainer" / "checkpoint-60"
    shutil.copytree(run, trainer)
    for f in native["hf"][0].iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, trainer / f.name)
    opts = ReadOptions(config=str(native["config"]))
    cset = CheckpointSet.from_refs([str(tag), str(run), str(trainer)], options=opts)
    hf = CheckpointReader(native["hf"][0])
    for c in cset.checkpoints:
        assert c.reader.format == "zero" and training_step(c) == 60
        for key in c.reader.keys():
            assert torch.equal(c.reader.get(key), hf.get(key if key in hf.meta() else FILE_NAME[key])), key
    assert cset.checkpoints[2].config_dir == trainer  # its own config and tokenizer
    assert cset.checkpoints[1].config_dir == native["config"]


def test_zero2_module_precision_reads_the_saved_module_weights(native):
    """``model.precision=module``: the module weights of ``mp_rank_00_model_states.pt`` (fp32 here, as
    trained), not the optimizer's masters; ZeRO-3 keeps none and says so."""
    cset = CheckpointSet.from_refs(
        [str(f) for f in native["zero2"]], options=ReadOptions(config=str(native["config"]), precision="module")
    )
    hf = CheckpointReader(native["hf"][1])
    for key in cset.newest.reader.keys():
        assert torch.equal(cset.newest.reader.get(key), hf.get(key if key in hf.meta() else FILE_NAME[key])), key
    proc = _merge(native, "z3module", native["zero3"], "model.precision=module")
    assert proc.returncode == 2
    assert "model.precision=module needs ZeRO stage 1 or 2" in proc.stderr


def _broken(native: dict) -> dict[str, tuple[list[Path], str, tuple[str, ...]]]:
    tmp = native["tmp"] / "broken"
    tmp.mkdir(exist_ok=True)
    old, new = native["zero3"]
    # a rank's optimizer partition missing
    missing = tmp / "missing_rank"
    shutil.copytree(new, missing)
    tag = missing / (missing / "latest").read_text().strip()
    next(tag.glob("zero_pp_rank_1_*_optim_states.pt")).unlink()
    # optimizer shards only (the model states never written)
    optim_only = tmp / "optim_only" / "global_step90"
    optim_only.mkdir(parents=True)
    for f in (new / "global_step90").glob("*_optim_states.pt"):
        shutil.copy(f, optim_only / f.name)
    # a DCP whose .metadata (written last) is missing
    no_meta = tmp / "no_meta"
    shutil.copytree(native["dcp"][1], no_meta)
    (no_meta / ".metadata").unlink()
    key_map = tmp / "map.yaml"
    key_map.write_text("rename:\n  - ['gpt_neox\\.embed_in\\.weight', 'gpt_neox.embedding.weight']\n")
    return {
        "rank file missing": ([old, missing], "a rank's file is missing", ()),
        "optimizer-only": ([old, optim_only], "has no *_model_states.pt (only optimizer shards?)", ()),
        "dcp without .metadata": ([native["dcp"][0], no_meta], "has no .metadata", ()),
        "key map leaves keys unmatched": (
            native["dcp"],
            "1 tensors match no tensor of the model (model.gpt_neox.embed_in.weight)",
            (f"model.key_map={key_map}",),
        ),
    }


def test_broken_native_checkpoints_are_one_line_and_write_nothing(native):
    for name, (folders, message, extra) in _broken(native).items():
        proc = _merge(native, "broken", folders, *extra)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, name
        assert not (native["tmp"] / "out_broken").exists(), name


def test_watch_takes_a_zero_tag_once_latest_names_it_and_every_rank_saved(native):
    from ckptmerge.watch.completeness import latest_pointer_step, why_not_ready

    run = native["tmp"] / "watched"
    shutil.copytree(native["zero3"][1], run)
    tag = run / "global_step90"
    latest = latest_pointer_step(run)
    assert latest == 90
    assert why_not_ready(tag, 90, 0.0, 60.0, latest) is None  # named by latest: no settling needed
    (run / "latest").unlink()
    assert why_not_ready(tag, 90, 0.0, 60.0, None).startswith("settling")
    assert why_not_ready(tag, 90, 60.0, 60.0, None) is None
    next(tag.glob("zero_pp_rank_1_*_optim_states.pt")).unlink()  # rank 1 still saving
    assert "a rank is still saving" in why_not_ready(tag, 90, 99.0, 60.0, None)


def _search(native: dict, name: str, folders: list[Path], traj) -> dict:
    tmp = native["tmp"]
    args = [
        "model=local",
        f"model.checkpoints=[{','.join(map(str, folders))}]",
        f"model.config={native['config']}",
        "eval.tasks=[ckptmerge_dev_bpb]",
        f"eval.include_path={traj.tasks_dir}",
        "search.budget=3",
        f"tracking.uri=sqlite:///{tmp / (name + '.db')}",
        "tracking.experiment=native",
        f"registry.name=native-{name}",
        "registry.require_significant_gain=false",
        f"hydra.run.dir={tmp / ('search_' + name)}",
    ]
    proc = run_main(args, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / f"search_{name}" / "result.json").read_text())


def test_search_over_zero3_and_dcp_gives_the_transformers_result(native, tiny_trajectory):
    """Same trials, same objective to the last bit, same chosen weights; the written merge the same tensors."""
    ref = _search(native, "hf", native["hf"], tiny_trajectory)
    for fmt in ("zero3", "dcp"):
        got = _search(native, fmt, native[fmt], tiny_trajectory)
        assert [(t["lambda"], t["objective"]) for t in got["trials"]] == [
            (t["lambda"], t["objective"]) for t in ref["trials"]
        ], fmt
        assert got["objective"] == ref["objective"] and got["weights"] == ref["weights"], fmt
        assert got["rescored_objective"] == ref["rescored_objective"], fmt
        _assert_same_tensors(native["tmp"] / f"search_{fmt}" / "merged", native["tmp"] / "search_hf" / "merged")


def test_watch_over_a_deepspeed_run_folder_searches_its_zero3_tags(native, tiny_trajectory):
    """``action=watch`` beside a DeepSpeed job: the run folder's ``global_stepN`` tags and its ``latest``,
    config and tokenizer from model.config; the pair is searched and its merge written."""
    tmp = native["tmp"]
    run = tmp / "ds_run"
    run.mkdir()
    for folder in native["zero3"]:
        tag = (folder / "latest").read_text().strip()
        shutil.copytree(folder / tag, run / tag)
    (run / "latest").write_text("global_step90")
    args = [
        "action=watch",
        "model=local",
        f"watch.dir={run}",
        "watch.poll_s=0.3",
        "watch.settle_s=1",
        "watch.idle_exit_s=5",
        f"model.config={native['config']}",
        "eval.tasks=[ckptmerge_dev_bpb]",
        f"eval.include_path={tiny_trajectory.tasks_dir}",
        "eval.limit=12",
        "search.budget=2",
        f"tracking.uri=sqlite:///{tmp / 'watch.db'}",
        "registry.name=native-watch",
        "tracking.log_plots=false",
        f"hydra.run.dir={tmp / 'watch_run'}",
    ]
    proc = run_main(args, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pair global_step60 → global_step90: searching (budget 2)" in proc.stdout + proc.stderr
    merged = tmp / "watch_run" / "merges" / "global_step60+global_step90"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
