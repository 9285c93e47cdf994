"""A checkpoint folder is used only when complete: checked on real tiny safetensors checkpoints."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ckptmerge.watch.completeness import (
    Settling,
    latest_pointer_step,
    missing_part,
    safetensors_shortfall,
    why_not_ready,
)
from tests.helpers import tiny_neox


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return tiny_neox(tmp_path_factory.mktemp("whole") / "step100")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tiny_neox(tmp_path_factory.mktemp("sharded") / "checkpoint-200", shard="20KB")
    assert (folder / "model.safetensors.index.json").is_file()
    return folder


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_whole_checkpoint_lacks_nothing(whole, sharded):
    assert missing_part(whole) is None
    assert missing_part(sharded) is None


def test_truncated_safetensors_is_incomplete_at_every_cut(whole, tmp_path):
    folder = _copy(whole, tmp_path / "step100")
    st = folder / "model.safetensors"
    data = st.read_bytes()
    for cut in (0, 5, 8, 100, len(data) // 2, len(data) - 1):
        st.write_bytes(data[:cut])
        reason = missing_part(folder)
        assert reason is not None and "model.safetensors" in reason, (cut, reason)
    st.write_bytes(data)
    assert missing_part(folder) is None
    assert safetensors_shortfall(st) is None


def test_missing_or_short_shard_of_an_index_is_incomplete(sharded, tmp_path):
    folder = _copy(sharded, tmp_path / "checkpoint-200")
    shards = sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))
    last = folder / shards[-1]
    data = last.read_bytes()
    last.unlink()
    assert missing_part(folder) == f"shard {shards[-1]} named by model.safetensors.index.json is missing"
    last.write_bytes(data[: len(data) - 10])
    assert f"{shards[-1]} has {len(data) - 10} of {len(data)} bytes" == missing_part(folder)


def test_missing_config_or_weights_is_incomplete(whole, tmp_path):
    folder = _copy(whole, tmp_path / "step100")
    (folder / "config.json").unlink()
    assert missing_part(folder) == "config.json is missing"
    (folder / "config.json").write_text('{"model_type": ')  # half written
    assert missing_part(folder) == "config.json is not valid JSON yet"
    shutil.copy(whole / "config.json", folder / "config.json")
    (folder / "model.safetensors").unlink()
    assert missing_part(folder).startswith("no weight file yet")


def test_a_folder_still_changing_waits_for_the_settling_interval(whole, tmp_path):
    folder = _copy(whole, tmp_path / "step100")
    now = [1000.0]
    settling = Settling(10.0, clock=lambda: now[0])
    assert settling.unchanged_for(folder) == 0.0  # first sight
    now[0] += 6
    quiet = settling.unchanged_for(folder)
    assert quiet == 6.0
    assert why_not_ready(folder, 100, quiet, 10.0, None).startswith("settling")
    (folder / "extra.bin").write_bytes(b"x")  # the trainer writes one more file
    now[0] += 6
    assert settling.unchanged_for(folder) == 0.0  # the clock starts again
    now[0] += 10
    quiet = settling.unchanged_for(folder)
    assert quiet == 10.0 and why_not_ready(folder, 100, quiet, 10.0, None) is None


def test_a_trainers_completion_marker_skips_the_settling_but_not_the_checks(whole, tmp_path):
    folder = _copy(whole, tmp_path / "checkpoint-100")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 100}))
    assert why_not_ready(folder, 100, 0.0, 10.0, None) is None
    st = folder / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-4])  # a marker does not vouch for a short file
    assert "model.safetensors has" in why_not_ready(folder, 100, 0.0, 10.0, None)


def test_a_latest_pointer_holds_back_newer_folders(whole, tmp_path):
    (tmp_path / "latest").write_text("global_step200\n")  # DeepSpeed
    assert latest_pointer_step(tmp_path) == 200
    folder = _copy(whole, tmp_path / "global_step300")
    os.utime(folder / "config.json")
    assert why_not_ready(folder, 300, 99.0, 1.0, 200) == "the trainer's latest pointer names step 200"
    assert why_not_ready(folder, 200, 99.0, 1.0, 200) is None
    (tmp_path / "latest").unlink()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7000")  # Megatron
    assert latest_pointer_step(tmp_path) == 7000


def test_a_distributed_checkpoint_is_used_once_its_metadata_is_written_and_it_settled(whole, tmp_path):
    """DCP (torchtitan's ``step-N``): no config.json or safetensors of its own; ``.metadata`` is written last."""
    from tests.native_writers import write_dcp

    folder = write_dcp(whole, tmp_path / "step-100")
    assert missing_part(folder) is None
    assert why_not_ready(folder, 100, 0.0, 10.0, None).startswith("settling")
    assert why_not_ready(folder, 100, 10.0, 10.0, None) is None
    (folder / ".metadata").unlink()  # a save still under way: the data files, not yet the metadata
    assert ".metadata is not written yet" in missing_part(folder)
    assert ".metadata is not written yet" in why_not_ready(folder, 100, 99.0, 10.0, None)
