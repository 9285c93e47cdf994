"""The tiny trajectory's checkpoints as a pretraining job writes them: ZeRO-2 and ZeRO-3 saved by DeepSpeed
itself (two gloo ranks on the CPU accelerator) and Distributed Checkpoints saved by
``torch.distributed.checkpoint``. A merge and a search over them give bit for bit the weights, and the
same result, as over the transformers folders; broken inputs are one line, exit 2, nothing written."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
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


def _search_args(native: dict, name: str, folders: list[Path], traj) -> list[str]:
    tmp = native["tmp"]
    return [
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


def _search(native: dict, name: str, folders: list[Path], traj) -> dict:
    proc = run_main(_search_args(native, name, folders, traj), cwd=native["tmp"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((native["tmp"] / f"search_{name}" / "result.json").read_text())


@pytest.fixture(scope="module")
def hf_search(native, tiny_trajectory) -> dict:
    """The search over the transformers folders: the reference of every search over native checkpoints."""
    return _search(native, "hf", native["hf"], tiny_trajectory)


def test_search_over_zero3_and_dcp_gives_the_transformers_result(native, hf_search, tiny_trajectory):
    """Same trials, same objective to the last bit, same chosen weights; the written merge the same tensors.
    Then ``action=promote`` of the ZeRO-3 search's candidate: the search's logged config (model.config,
    native checkpoints) is read back and its registered merge is scored and made the first champion."""
    ref = hf_search
    for fmt in ("zero3", "dcp"):
        got = _search(native, fmt, native[fmt], tiny_trajectory)
        assert [(t["lambda"], t["objective"]) for t in got["trials"]] == [
            (t["lambda"], t["objective"]) for t in ref["trials"]
        ], fmt
        assert got["objective"] == ref["objective"] and got["weights"] == ref["weights"], fmt
        assert got["rescored_objective"] == ref["rescored_objective"], fmt
        _assert_same_tensors(native["tmp"] / f"search_{fmt}" / "merged", native["tmp"] / "search_hf" / "merged")
        if fmt == "zero3":
            _assert_promoted(native, got, tiny_trajectory)


def test_runtime_deepspeed_over_zero3_runs_the_transformers_trials(native, hf_search, tiny_trajectory):
    """``runtime=deepspeed``: two ranks (CPU, gloo), each reading every ZeRO-3 tensor and keeping its own
    partition of it, run the trials of the one-process search over the transformers folders."""
    from tests.integration.test_deepspeed import run_deepspeed

    args = _search_args(native, "ds_zero3", native["zero3"], tiny_trajectory)
    proc = run_deepspeed(["runtime=deepspeed", *args], cwd=native["tmp"], timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    got = json.loads((native["tmp"] / "search_ds_zero3" / "result.json").read_text())
    assert got["runtime"]["backend"] == "deepspeed" and got["runtime"]["world_size"] == 2
    assert len(got["trials"]) == len(hf_search["trials"])
    for a, b in zip(hf_search["trials"], got["trials"]):
        assert b["lambda"] == pytest.approx(a["lambda"], abs=1e-9)
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-9, abs=1e-12)
    assert got["rescored_objective"] == pytest.approx(hf_search["rescored_objective"], rel=1e-9)
    _assert_same_tensors(native["tmp"] / "search_ds_zero3" / "merged", native["tmp"] / "search_hf" / "merged")


def _assert_promoted(native: dict, search: dict, traj) -> None:
    tmp = native["tmp"]
    uri = f"sqlite:///{tmp / 'zero3.db'}"
    args = [
        "action=promote",
        "registry.name=native-zero3",
        f"tracking.uri={uri}",
        "eval.test_tasks=[ckptmerge_test_bpb]",
        f"eval.include_path={traj.tasks_dir}",
        "eval.limit=6",
        f"hydra.run.dir={tmp / 'promote_zero3'}",
    ]
    proc = run_main(args, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp / "promote_zero3" / "result.json").read_text())
    version = search["registered_model"]["version"]
    assert result["decision"] == "first" and result["candidate"]["version"] == version
    assert math.isfinite(result["candidate"]["metrics"]["ckptmerge_test_bpb/bits_per_byte"])
    champion = MlflowClient(uri).get_model_version_by_alias("native-zero3", "champion")
    assert str(champion.version) == version


def _compare(native: dict, name: str, folders: list[Path], traj) -> dict:
    tmp = native["tmp"]
    args = [
        "action=compare",
        "model=local",
        f"model.checkpoints=[{','.join(map(str, folders))}]",
        f"model.config={native['config']}",
        "eval.tasks=[ckptmerge_dev_bpb]",
        "eval.test_tasks=[ckptmerge_test_bpb]",
        f"eval.include_path={traj.tasks_dir}",
        "eval.limit=6",
        "search.budget=2",
        # a weighting rule, a calibration method (reads each checkpoint's tensors) and a search
        "compare.methods=[newest,uniform,fisher,bo]",
        "+compare.settings.fisher.tokens=256",
        f"compare.calibration_path={traj.calib_path}",
        f"tracking.uri=sqlite:///{tmp / ('compare_' + name + '.db')}",
        f"hydra.run.dir={tmp / ('compare_' + name)}",
    ]
    proc = run_main(args, cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / f"compare_{name}" / "compare.json").read_text())


def test_compare_over_zero3_gives_the_transformers_rows(native, tiny_trajectory):
    """Every method's row (objective, weights, evaluations, dev and test metrics, paired gains) is the
    same to the last bit over ZeRO-3 fp32 masters as over the transformers folders; only timings differ."""
    ref = _compare(native, "hf", native["hf"], tiny_trajectory)
    got = _compare(native, "zero3", native["zero3"], tiny_trajectory)

    def rows(out: dict) -> list[dict]:
        return [{k: v for k, v in m.items() if k not in ("seconds", "run_id")} for m in out["methods"]]

    assert got["checkpoints"] == ref["checkpoints"]
    assert [m["method"] for m in got["methods"]] == ["newest", "uniform", "fisher", "bo"]
    assert rows(got) == rows(ref)
    assert got["best_method"] == ref["best_method"]


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
