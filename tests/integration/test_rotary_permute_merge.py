"""``model.key_map`` with ``permute``, end to end through ``src/main.py``: two Distributed Checkpoints saved
under torchtitan's Llama names (``wq``/``wk`` rows in Meta's interleaved rotary order), merged with the
documented key map (docs/checkpoints-and-tasks.md), give bit for bit the merge of the same weights as
transformers folders; ``merge.output_format=dcp`` puts the rows back in the checkpoints' own order. Without
the ``permute`` rule the q/k rows of the merged folder are Meta's, not the transformers merge's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptmerge.merge.linear import linear_merge
from tests.conftest import REPO, run_main
from tests.unit.test_rotary_permute import write_titan_llama

pytestmark = pytest.mark.slow

WEIGHTS = (0.3, 0.7)


def _documented_key_map() -> str:
    """The torchtitan Llama key map exactly as docs/checkpoints-and-tasks.md prints it."""
    doc = (REPO / "docs" / "checkpoints-and-tasks.md").read_text()
    block = re.search(r"```yaml\n(# model\.key_map for torchtitan.*?)```", doc, flags=re.S)
    assert block is not None, "the torchtitan key map is no longer in docs/checkpoints-and-tasks.md"
    assert "permute:" in block.group(1)
    return block.group(1)


@pytest.fixture(scope="module")
def titan(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("titan_merge")
    states = [write_titan_llama(tmp / "hf" / f"step{s}", tmp / "titan" / f"step{s}", seed=s) for s in (1, 2)]
    key_map = _documented_key_map()
    (tmp / "permute.yaml").write_text(key_map)
    # the same rules without the permute section (everything from "permute:" to the end of the block)
    (tmp / "rename.yaml").write_text(key_map[: key_map.index("permute:")])
    return {"tmp": tmp, "states": states}


def _merge(titan: dict, name: str, source: str, *extra: str) -> Path:
    tmp = titan["tmp"]
    folders = [tmp / source / f"step{s}" for s in (1, 2)]
    args = [
        "action=merge",
        "model=local",
        f"model.checkpoints=[{','.join(map(str, folders))}]",
        f"model.config={tmp / 'hf' / 'step2'}",
        f"merge.weights=[{WEIGHTS[0]},{WEIGHTS[1]}]",
        f"merge.output_dir={tmp / ('out_' + name)}",
        f"hydra.run.dir={tmp / ('run_' + name)}",
        *extra,
    ]
    proc = run_main(args, cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / ("out_" + name)


@pytest.fixture(scope="module")
def hf_merge(titan) -> dict[str, torch.Tensor]:
    return load_file(str(_merge(titan, "hf", "hf") / "model.safetensors"))


def test_permuted_dcp_merge_is_bit_for_bit_the_transformers_merge(titan, hf_merge):
    merged = load_file(
        str(_merge(titan, "permute", "titan", f"model.key_map={titan['tmp'] / 'permute.yaml'}") / "model.safetensors")
    )
    assert set(merged) == set(hf_merge)
    for key, want in hf_merge.items():
        assert merged[key].dtype == want.dtype and torch.equal(merged[key], want), key


def test_without_permute_the_q_and_k_rows_are_not_transformers(titan, hf_merge):
    """The check above can say no: the same merge without the rule differs exactly in q/k."""
    merged = load_file(
        str(_merge(titan, "rename", "titan", f"model.key_map={titan['tmp'] / 'rename.yaml'}") / "model.safetensors")
    )
    differ = sorted(k for k, want in hf_merge.items() if not torch.equal(merged[k], want))
    assert differ == sorted(k for k in hf_merge if k.endswith(("q_proj.weight", "k_proj.weight")))


def test_dcp_output_puts_the_rows_back_in_the_checkpoints_order(titan):
    import torch.distributed.checkpoint as dcp

    out = _merge(titan, "dcp", "titan", f"model.key_map={titan['tmp'] / 'permute.yaml'}", "merge.output_format=dcp")
    assert json.loads((titan["tmp"] / "run_dcp" / "result.json").read_text())["output_format"] == "dcp"
    old, new = (s["titan"] for s in titan["states"])
    state = {k: torch.empty_like(v) for k, v in new.items()}
    dcp.load({"model": state}, checkpoint_id=str(out), no_dist=True)
    for key in new:
        want = linear_merge([old[key], new[key]], list(WEIGHTS), new[key].dtype)  # in the checkpoints' order
        assert torch.equal(state[key], want), key
