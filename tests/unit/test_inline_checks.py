"""action=merge reads each input once: the finite and digest checks run on the merge stream's own reads
(ckptmerge.checkpoints.inline_checks), on real safetensors, with the same digests and the same refusals
as the up-front scan."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ckptmerge.actions.merge import run_merge
from ckptmerge.checkpoints import CheckpointSet, checkpoint_set
from ckptmerge.checkpoints.content import CHUNK_ELEMS, check_before_reading, scan
from ckptmerge.checkpoints.inline_checks import InlineChecks
from ckptmerge.checkpoints.reader import CheckpointReader
from ckptmerge.checkpoints.writer import write_merged
from ckptmerge.cli import store_schema
from ckptmerge.config import config_from_dict
from ckptmerge.errors import CheckpointError
from ckptmerge.merge import get_method
from tests.helpers import tiny_neox

CONF = Path(__file__).resolve().parents[2] / "conf"
# hidden 768: dense_h_to_4h holds 1536 x 768 = 1.18M elements, more than one digest chunk (2^20)
BIG = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"


class CountingReader(CheckpointReader):
    """A real safetensors reader that counts every tensor it is asked for (by folder name and tensor)."""

    reads: Counter = Counter()

    def get(self, key: str) -> torch.Tensor:
        CountingReader.reads[(self.folder.name, key)] += 1
        return super().get(key)


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    return tiny_neox(root / "step100", seed=1, hidden=768, layers=1), tiny_neox(
        root / "step200", seed=2, hidden=768, layers=1
    )


def _merge_cfg(a: Path, b: Path, out: Path, *extra: str):
    store_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "action=merge",
                "model=local",
                f"model.checkpoints=[{a},{b}]",
                "merge.weights=[0.25,0.75]",
                f"merge.output_dir={out}",
                *extra,
            ],
        )
    return config_from_dict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def _edit(src: Path, dst: Path, edit) -> Path:
    folder = shutil.copytree(src, dst)
    f = folder / "model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f), metadata={"format": "pt"})
    return folder


def test_action_merge_reads_each_input_once(wide_pair, tmp_path, monkeypatch):
    a, b = wide_pair
    monkeypatch.setattr(checkpoint_set, "CheckpointReader", CountingReader)
    CountingReader.reads.clear()
    run_merge(_merge_cfg(a, b, tmp_path / "out"))
    keys = list(CheckpointReader(b).meta())
    assert CountingReader.reads == Counter({(f.name, k): 1 for f in (a, b) for k in keys})
    merged, sa, sb = (load_file(str(f / "model.safetensors")) for f in (tmp_path / "out", a, b))
    assert torch.allclose(merged[BIG], 0.25 * sa[BIG] + 0.75 * sb[BIG], rtol=1e-6, atol=1e-8)
    # the counter sees every read: the up-front scan that the other actions run is one more of each
    CountingReader.reads.clear()
    scan(CheckpointSet.from_refs([str(a), str(b)]), allow_nonfinite=False, nonfinite_hint="")
    assert CountingReader.reads == Counter({(f.name, k): 1 for f in (a, b) for k in keys})


@pytest.mark.parametrize("chunk_elems", [1 << 19, 3 << 18, 1 << 22], ids=["half", "straddling", "whole"])
def test_inline_digests_are_the_scans(wide_pair, tmp_path, chunk_elems):
    """Stream units that halve, straddle or exceed the digest chunks give the scan's digests exactly."""
    a, b = wide_pair
    assert CheckpointReader(a).meta()[BIG].numel > CHUNK_ELEMS
    cset = CheckpointSet.from_refs([str(a), str(b)])
    checks = InlineChecks(cset, check_before_reading(cset, tokenizer_required=False), False, "")
    write_merged(
        [c.reader for c in cset.checkpoints],
        b,
        [0.5, 0.5],
        tmp_path / "out",
        get_method("linear"),
        1 << 30,
        chunk_elems=chunk_elems,
        checks=checks,
    )
    assert checks.digests() == scan(cset, allow_nonfinite=False, nonfinite_hint="")
    assert len(set(checks.digests())) == 2


def test_nan_in_the_second_digest_chunk_aborts_the_merge(wide_pair, tmp_path):
    a, b = wide_pair

    def nan(state):
        state[BIG].view(-1)[CHUNK_ELEMS + 5] = float("nan")  # past the first chunk: units were already merged

    bad = _edit(a, tmp_path / "nan" / "step100", nan)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=f"step100 has NaN or Inf in tensor {BIG}.*merge.allow_nonfinite=true"):
        run_merge(_merge_cfg(bad, b, out))
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["nan"]  # nothing half written
    run_merge(_merge_cfg(bad, b, out, "merge.allow_nonfinite=true"))
    assert int(torch.isnan(load_file(str(out / "model.safetensors"))[BIG]).sum()) == 1


def test_a_copy_is_refused_after_the_stream_and_nothing_is_published(wide_pair, tmp_path):
    a, _ = wide_pair
    copy = shutil.copytree(a, tmp_path / "copy")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="are the same checkpoint \\(identical weights\\)"):
        run_merge(_merge_cfg(a, copy, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_truncated_shard_is_one_line_before_any_read(wide_pair, tmp_path):
    a, b = wide_pair
    cut = shutil.copytree(b, tmp_path / "step200")
    f = cut / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="is truncated"):
        run_merge(_merge_cfg(a, cut, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
