"""Training-native checkpoints behind the reader interface: PyTorch Distributed Checkpoints written by
``torch.distributed.checkpoint`` itself, key maps, and the one-line refusals. (DeepSpeed ZeRO needs
the launcher: tests/integration/test_native_checkpoints.py.)"""

from __future__ import annotations

import re
import shutil
import weakref
from pathlib import Path

import pytest
import torch

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet, ReadOptions
from ckptmerge.checkpoints.names import KeyMap, match_names
from ckptmerge.checkpoints.reader import CheckpointReader
from ckptmerge.errors import CheckpointError
from tests.helpers import tiny_neox
from tests.native_writers import write_dcp

# GPT-NeoX names as another training framework might spell them, and the key map back.
_OURS = [
    (r"gpt_neox\.embed_in\.weight", "tok_embeddings.weight"),
    (r"gpt_neox\.layers\.(\d+)\.(.*)", r"blocks.\1.\2"),
    (r"gpt_neox\.final_layer_norm\.(.*)", r"norm.\1"),
    (r"lm_head\.weight", "output.weight"),
]
KEY_MAP = """\
rename:
  - ['tok_embeddings\\.weight', 'gpt_neox.embed_in.weight']
  - ['blocks\\.(\\d+)\\.(.*)', 'gpt_neox.layers.\\1.\\2']
  - ['norm\\.(.*)', 'gpt_neox.final_layer_norm.\\1']
  - ['output\\.weight', 'lm_head.weight']
drop:
  - 'rope\\.cache'
"""


def _rename(key: str) -> str:
    for pattern, repl in _OURS:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(repl)
    return key


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("native")
    hf = [tiny_neox(tmp / f"step{s}", seed=s) for s in (1, 2)]
    out = {f"hf{i}": f for i, f in enumerate(hf)}
    for i, f in enumerate(hf):
        out[f"dcp{i}"] = write_dcp(f, tmp / "dcp" / f"step{i + 1}")
        out[f"ren{i}"] = write_dcp(f, tmp / "ren" / f"step{i + 1}", rename=_rename)
    out["optim_only"] = write_dcp(hf[0], tmp / "optim_only", model=False)
    (tmp / "map.yaml").write_text(KEY_MAP)
    out["map"] = tmp / "map.yaml"
    return out


def _same(reader, hf: CheckpointReader) -> None:
    """Every tensor as in the transformers folder (its file says ``embed_out``, the model ``lm_head``)."""
    file_key = {"lm_head.weight": "embed_out.weight"}
    assert len(reader.keys()) == len(hf.keys())
    for key in reader.keys():
        assert torch.equal(reader.get(key), hf.get(key if key in hf.meta() else file_key[key])), key


def test_dcp_reads_the_model_tensors_under_transformers_names(folders):
    """A ``{"model": ..., "optimizer": ...}`` DCP: the ``model.`` wrapper is stripped because that makes the
    names match; optimizer moments are never listed; config and tokenizer come from model.config."""
    cset = CheckpointSet.from_refs(
        [str(folders["dcp0"]), str(folders["dcp1"])], options=ReadOptions(config=str(folders["hf1"]))
    )
    assert cset.newest.reader.format == "dcp"
    assert cset.newest.config_dir == folders["hf1"]
    assert not any(k.startswith("optimizer") for k in cset.meta())
    _same(cset.checkpoints[0].reader, CheckpointReader(folders["hf0"]))
    _same(cset.newest.reader, CheckpointReader(folders["hf1"]))
    assert cset.newest.reader.raw_name("gpt_neox.embed_in.weight") == "model.gpt_neox.embed_in.weight"  # type: ignore[attr-defined]


def test_key_map_renames_another_frameworks_names(folders):
    cset = CheckpointSet.from_refs(
        [str(folders["ren0"]), str(folders["ren1"])],
        options=ReadOptions(config=str(folders["hf1"]), key_map=str(folders["map"])),
    )
    _same(cset.newest.reader, CheckpointReader(folders["hf1"]))
    assert cset.newest.reader.raw_name("lm_head.weight") == "model.output.weight"  # type: ignore[attr-defined]


def test_unmatched_names_without_a_key_map_are_one_line(folders):
    with pytest.raises(
        CheckpointError, match=r"28 tensors match no tensor of the model \(model\.blocks\.0\..*give model\.key_map"
    ):
        CheckpointSet.from_refs(
            [str(folders["ren0"]), str(folders["ren1"])], options=ReadOptions(config=str(folders["hf1"]))
        )


def test_key_map_that_leaves_names_unmatched_names_them(folders, tmp_path):
    partial = tmp_path / "partial.yaml"
    partial.write_text("\n".join(KEY_MAP.splitlines()[:3]) + "\n")  # embeddings and blocks only
    with pytest.raises(
        CheckpointError,
        match=r"3 tensors match no tensor of the model \(model\.norm\.bias, model\.norm\.weight, model\.output",
    ):
        CheckpointSet.from_refs(
            [str(folders["ren0"]), str(folders["ren1"])],
            options=ReadOptions(config=str(folders["hf1"]), key_map=str(partial)),
        )


def test_key_map_that_drops_a_parameter_names_it(folders, tmp_path):
    dropping = tmp_path / "drop.yaml"
    dropping.write_text(KEY_MAP + "  - 'output\\.weight'\n")
    with pytest.raises(CheckpointError, match=r"lacks 1 model parameters \(lm_head\.weight\)"):
        CheckpointSet.from_refs(
            [str(folders["ren0"]), str(folders["ren1"])],
            options=ReadOptions(config=str(folders["hf1"]), key_map=str(dropping)),
        )


def test_dcp_without_metadata_is_refused(folders, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(folders["dcp1"], partial)
    (partial / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"has no \.metadata: .* incomplete"):
        CheckpointSet.from_refs([str(folders["dcp0"]), str(partial)], options=ReadOptions(config=str(folders["hf1"])))


def test_dcp_with_a_truncated_data_file_is_refused(folders, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(folders["dcp1"], cut)
    data = sorted(cut.glob("*.distcp"))[0]
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"data file {data.name} is truncated"):
        CheckpointSet.from_refs([str(folders["dcp0"]), str(cut)], options=ReadOptions(config=str(folders["hf1"])))


def test_optimizer_only_shards_are_refused(folders):
    with pytest.raises(CheckpointError, match=r"holds no model tensors, only training state .* optimizer-only"):
        CheckpointSet.from_refs(
            [str(folders["dcp0"]), str(folders["optim_only"])], options=ReadOptions(config=str(folders["hf1"]))
        )


def test_native_checkpoint_without_config_asks_for_model_config(folders):
    with pytest.raises(CheckpointError, match=r"has no config.json: set model.config=PATH"):
        CheckpointSet.from_refs([str(folders["dcp0"]), str(folders["dcp1"])])


def test_match_names_strips_a_wrapper_only_when_that_matches():
    model = ["model.embed.weight", "lm_head.weight"]
    # names that already match keep their "model." (it is part of the transformers name)
    assert match_names(model, model, model, None, "x") == {k: k for k in model}
    wrapped = ["module.model.embed.weight", "module.lm_head.weight", "optimizer.state.0.exp_avg"]
    assert match_names(wrapped, model, model, None, "x") == {
        "module.model.embed.weight": "model.embed.weight",
        "module.lm_head.weight": "lm_head.weight",
    }


def test_key_map_rules_are_ordered_and_checked(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("rename:\n  - ['a\\.(\\d+)', 'first.\\1']\n  - ['a\\.1', 'never']\ndrop: ['skip.*']\n")
    km = KeyMap.load(p)
    assert km.apply("a.1") == "first.1" and km.apply("skip.me") is None and km.apply("other") == "other"
    p.write_text("rename:\n  - ['a(', 'b']\n")
    with pytest.raises(CheckpointError, match=r"rename\[0\]: 'a\(' is not a valid regex"):
        KeyMap.load(p)
    p.write_text("renames: []\n")
    with pytest.raises(CheckpointError, match=r"must be a mapping with 'rename'"):
        KeyMap.load(p)


def test_merge_written_as_dcp_loads_back_under_the_inputs_names_and_trains(folders, tmp_path):
    """``merge.output_format=dcp``: the merge of two renamed DCPs, written back under their own names,
    loads with ``torch.distributed.checkpoint`` into the model (renamed as the training job had it)
    holding the same tensors as the transformers-folder merge, and a training step runs from it."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from tests.conftest import run_main

    def merge(name: str, ckpts: list[Path], *extra: str):
        args = [
            "action=merge",
            "model=local",
            f"model.checkpoints=[{ckpts[0]},{ckpts[1]}]",
            f"model.config={folders['hf1']}",
            "merge.weights=[0.3,0.7]",
            f"merge.output_dir={tmp_path / name}",
            f"hydra.run.dir={tmp_path / ('run-' + name)}",
            *extra,
        ]
        proc = run_main(args, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return tmp_path / name

    ref = load_file(str(merge("hf", [folders["hf0"], folders["hf1"]]) / "model.safetensors"))
    out = merge("dcp", [folders["ren0"], folders["ren1"]], f"model.key_map={folders['map']}", "merge.output_format=dcp")
    assert (out / ".metadata").is_file() and (out / "config.json").is_file() and not list(out.glob("*.safetensors"))
    result = __import__("json").loads((tmp_path / "run-dcp" / "result.json").read_text())
    assert result["output_format"] == "dcp" and result["output_names"] == "input"
    assert "A PyTorch Distributed Checkpoint" in (out / "README.md").read_text()

    model = AutoModelForCausalLM.from_pretrained(folders["hf0"], dtype=torch.float32)  # other values first
    state = {_rename(k): v for k, v in model.state_dict().items()}  # views of the parameters
    dcp.load({"model": state}, checkpoint_id=str(out), no_dist=True)
    for key, value in model.state_dict().items():
        want = ref[key if key in ref else "embed_out.weight"]
        assert torch.equal(value, want), key
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 64, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


class _Watched:
    """A native reader whose tensors are watched (each one owns a numpy buffer, weakly referenced) so the
    test sees which tensors the merge stream still holds when it reads the next one."""

    def __init__(self, inner, live: dict) -> None:
        self.inner, self.live = inner, live
        self.folder, self.format = inner.folder, inner.format
        self.held_at_read: list[tuple[str, list[str]]] = []

    def get(self, key: str) -> torch.Tensor:
        held = sorted({k for (k, _), ref in self.live.items() if ref() is not None and k != key})
        self.held_at_read.append((key, held))
        arr = self.inner.get(key).numpy().copy()
        self.live[(key, id(self))] = weakref.ref(arr)
        return torch.from_numpy(arr)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_stream_reads_no_tensor_while_a_larger_in_memory_one_is_still_held(folders, tmp_path):
    """A ZeRO or DCP tensor is read into memory and freed with its last merged unit: the read budget goes
    back then, so the next tensor is not read while the previous one is still whole in memory (it was
    returned unit by unit, letting the reader run ahead of the memory actually freed)."""
    from ckptmerge.checkpoints.writer import write_merged
    from ckptmerge.merge import linear_merge

    cset = CheckpointSet.from_refs(
        [str(folders["dcp0"]), str(folders["dcp1"])], options=ReadOptions(config=str(folders["hf1"]))
    )
    live: dict = {}
    sources = [_Watched(c.reader, live) for c in cset.checkpoints]
    meta = sources[-1].meta()
    pair = {k: 2 * m.nbytes for k, m in meta.items()}
    budget = max(pair.values())  # the largest tensor's pair fits; nothing else beside it
    write_merged(
        sources, folders["hf1"], [0.3, 0.7], tmp_path / "out", linear_merge, 1 << 30,
        chunk_elems=16, prefetch_bytes=budget, write_bytes=1 << 10,
    )  # fmt: skip
    for key, held in sources[0].held_at_read:
        assert sum(pair[k] for k in held) + pair[key] <= max(budget, pair[key]), (key, held)
    assert len(sources[0].held_at_read) == len(meta)
