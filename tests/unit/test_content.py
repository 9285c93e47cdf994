"""Content checks on real checkpoint files (ckptmerge.checkpoints.content) and the rules they rely on."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptmerge.checkpoints import CheckpointSet
from ckptmerge.checkpoints.content import (
    check_distinct_content,
    check_dtypes,
    check_order,
    check_tokenizers,
    scan,
    step_from_name,
    training_step,
    training_steps,
)
from ckptmerge.checkpoints.refs import parse_ref, resolve
from ckptmerge.config import ModelConfig, SearchConfig
from ckptmerge.errors import CheckpointError, ConfigError
from tests.helpers import tiny_neox

KEY = "gpt_neox.layers.0.attention.dense.weight"


@pytest.mark.parametrize(
    "name,step",
    [
        ("step00250", 250),
        ("step0", 0),
        ("checkpoint-500", 500),
        ("global_step500", 500),
        ("iter_0000500", 500),
        ("Checkpoint-7", 7),
        ("pythia-160m-step1000", 1000),
        ("step1000/", 1000),
        ("main", None),
        ("final", None),
        ("step1000-final", None),
        ("train_02200B", None),
        ("stepping", None),
    ],
)
def test_step_from_name(name, step):
    assert step_from_name(name) == step


def _edit(folder, edit):
    f = folder / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("content")
    return tiny_neox(root / "step100", seed=1), tiny_neox(root / "step200", seed=2)


def test_trainer_state_step_wins_over_the_name(tmp_path, pair):
    a = shutil.copytree(pair[0], tmp_path / "final")
    b = shutil.copytree(pair[1], tmp_path / "step50")
    (a / "trainer_state.json").write_text(json.dumps({"global_step": 1200, "log_history": []}))
    cset = CheckpointSet.from_refs([str(a), str(b)])
    assert [training_step(c) for c in cset.checkpoints] == [1200, 50]
    with pytest.raises(
        CheckpointError, match=r"not oldest first: final \(step 1200\), step50 \(step 50\).*model.order=given"
    ):
        check_order(cset, training_steps(cset), allow_equal=True)


def test_order_unknown_or_increasing_passes(tmp_path, pair):
    cset = CheckpointSet.from_refs([str(p) for p in pair])
    assert training_steps(cset) == [100, 200]
    check_order(cset, training_steps(cset), allow_equal=False)
    other = shutil.copytree(pair[0], tmp_path / "latest")
    cset = CheckpointSet.from_refs([str(pair[1]), str(other)])
    assert training_steps(cset) is None  # "latest" has no step: nothing to check
    equal = shutil.copytree(pair[0], tmp_path / "x" / "step200")
    cset = CheckpointSet.from_refs([str(pair[1]), str(equal)])
    check_order(cset, training_steps(cset), allow_equal=True)
    with pytest.raises(CheckpointError, match="are both at training step 200.*model.order=given"):
        check_order(cset, training_steps(cset), allow_equal=False)


def test_nan_is_refused_naming_checkpoint_and_tensor(tmp_path, pair):
    def nan(state):
        state[KEY][0, 1] = float("nan")

    bad = _edit(shutil.copytree(pair[1], tmp_path / "step200"), nan)
    cset = CheckpointSet.from_refs([str(pair[0]), str(bad)])
    with pytest.raises(CheckpointError, match=f"step200 has NaN or Inf in tensor {KEY}.*HINT"):
        scan(cset, allow_nonfinite=False, nonfinite_hint="; HINT")
    assert len(scan(cset, allow_nonfinite=True, nonfinite_hint="")) == 2


def test_same_inf_everywhere_is_a_constant_buffer_but_nan_is_not(tmp_path, pair):
    """A -inf mask buffer stored in fp16 (Pythia's masked_bias) is kept; NaN in every checkpoint is not."""

    def mask(value):
        def edit(state):
            state["gpt_neox.layers.0.attention.masked_bias"] = torch.tensor(value, dtype=torch.float16)

        return edit

    a = _edit(shutil.copytree(pair[0], tmp_path / "inf" / "step100"), mask(-1e9))  # -inf in fp16
    b = _edit(shutil.copytree(pair[1], tmp_path / "inf" / "step200"), mask(-1e9))
    scan(CheckpointSet.from_refs([str(a), str(b)]), allow_nonfinite=False, nonfinite_hint="")
    c = _edit(shutil.copytree(pair[0], tmp_path / "nan" / "step100"), mask(float("nan")))
    d = _edit(shutil.copytree(pair[1], tmp_path / "nan" / "step200"), mask(float("nan")))
    with pytest.raises(
        CheckpointError, match="step100 has NaN or Inf in tensor gpt_neox.layers.0.attention.masked_bias"
    ):
        scan(CheckpointSet.from_refs([str(c), str(d)]), allow_nonfinite=False, nonfinite_hint="")
    e = _edit(shutil.copytree(pair[1], tmp_path / "mixed" / "step200"), mask(1.0))
    with pytest.raises(CheckpointError, match="step100 has NaN or Inf"):
        scan(CheckpointSet.from_refs([str(a), str(e)]), allow_nonfinite=False, nonfinite_hint="")


def test_copy_is_the_same_checkpoint_and_one_changed_value_is_not(tmp_path, pair):
    copy = shutil.copytree(pair[1], tmp_path / "copy")
    cset = CheckpointSet.from_refs([str(pair[1]), str(copy)])
    with pytest.raises(CheckpointError, match="are the same checkpoint \\(identical weights\\)"):
        check_distinct_content(cset, scan(cset, False, ""))

    def nudge(state):
        state[KEY][0, 0] = torch.nextafter(state[KEY][0, 0], torch.tensor(10.0))

    near = _edit(shutil.copytree(pair[1], tmp_path / "near"), nudge)
    cset = CheckpointSet.from_refs([str(pair[1]), str(near)])
    check_distinct_content(cset, scan(cset, False, ""))
    # equal digests alone never decide: the byte comparison does
    check_distinct_content(cset, ["same", "same"])


def test_float8_is_refused_by_name(tmp_path, pair):
    def f8(state):
        state[KEY] = state[KEY].to(torch.float8_e5m2)

    a = _edit(shutil.copytree(pair[0], tmp_path / "step100"), f8)
    b = _edit(shutil.copytree(pair[1], tmp_path / "step200"), f8)
    with pytest.raises(CheckpointError, match=f"tensor {KEY} has dtype float8_e5m2, which ckptmerge cannot merge"):
        check_dtypes(CheckpointSet.from_refs([str(a), str(b)]))


def test_tokenizer_larger_than_the_embeddings_is_refused(tmp_path, pair, tiny_trajectory):
    """The trajectory's 512-token tokenizer beside a 64-row embedding: ids past 63 would index nothing."""
    folders = [shutil.copytree(p, tmp_path / p.name) for p in pair]
    for f in folders:
        for t in tiny_trajectory.checkpoints[-1].glob("tokenizer*"):
            shutil.copy(t, f / t.name)
    with pytest.raises(CheckpointError, match="its tokenizer has 512 tokens but config.json vocab_size is 64"):
        check_tokenizers(CheckpointSet.from_refs([str(f) for f in folders]))
    for f in folders:
        for t in f.glob("tokenizer*"):
            t.unlink()
    with pytest.raises(CheckpointError, match="step100 has no tokenizer files"):
        check_tokenizers(CheckpointSet.from_refs([str(f) for f in folders]))
    check_tokenizers(CheckpointSet.from_refs([str(f) for f in folders]), required=False)  # weights-only merge
    for t in tiny_trajectory.checkpoints[-1].glob("tokenizer*"):
        shutil.copy(t, folders[0] / t.name)
    with pytest.raises(CheckpointError, match="step200 has no tokenizer files"):  # some with, some without
        check_tokenizers(CheckpointSet.from_refs([str(f) for f in folders]), required=False)


def test_integer_tensors_are_the_newest_in_trials_and_in_the_written_merge(tmp_path, pair):
    """An int checkpoint tensor that transformers loads into a float parameter: trials used to average
    it while the writer copied the newest, so the written merge did not re-score as the trial."""
    from transformers import AutoModelForCausalLM

    from ckptmerge.checkpoints.writer import write_merged
    from ckptmerge.merge import linear_merge
    from ckptmerge.resident import SingleResidentModel

    def to_int(state):
        state[KEY] = (state[KEY] * 100).round().to(torch.int64)

    folders = [_edit(shutil.copytree(p, tmp_path / p.name), to_int) for p in pair]
    newest = load_file(str(folders[1] / "model.safetensors"))[KEY]
    oldest = load_file(str(folders[0] / "model.safetensors"))[KEY]
    assert not torch.equal(newest, oldest)
    cset = CheckpointSet.from_refs([str(f) for f in folders])
    res = SingleResidentModel(cset)
    assert res.model.state_dict()[KEY].is_floating_point()
    res.apply([0.5, 0.5])
    trial = res.model.state_dict()[KEY].clone()
    assert torch.equal(trial, newest.float())
    out = write_merged(
        [c.reader for c in cset.checkpoints],
        folders[1],
        [0.5, 0.5],
        tmp_path / "merged",
        linear_merge,
        shard_bytes=10**9,
    )
    assert torch.equal(load_file(str(out / "model.safetensors"))[KEY], newest)
    assert torch.equal(AutoModelForCausalLM.from_pretrained(out).state_dict()[KEY], trial)


def test_symlink_loop_is_one_line(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError, match="symlink loop"):
        resolve(parse_ref(str(loop)))


def test_config_seed_alpha_order():
    with pytest.raises(ConfigError, match=r"search.seed must be an integer in \[0, 2\*\*32\), got -1"):
        SearchConfig(seed=-1)
    with pytest.raises(ConfigError, match="search.seed"):
        SearchConfig(seed=2**32)
    SearchConfig(seed=2**32 - 1)
    with pytest.raises(ConfigError, match="search.alpha=0.99999 leaves no room"):
        SearchConfig(alpha=0.99999)
    SearchConfig(alpha=0.999, budget=2)
    with pytest.raises(ConfigError, match="search.budget=3 exceeds"):
        SearchConfig(alpha=0.999, budget=3)
    with pytest.raises(ConfigError, match="model.order='sorted' is not valid"):
        ModelConfig(order="sorted")
