"""``model.key_map`` ``permute``: torchtitan's Llama keeps the rows of ``wq`` and ``wk`` in Meta's
interleaved rotary order; read through the key map they come out in transformers' order (as
transformers' own Llama conversion permutes them), and a merge written back as a DCP puts them back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptmerge.checkpoints.dcp_writer import save_dcp
from ckptmerge.checkpoints.names import KeyMap
from ckptmerge.checkpoints.native import open_native
from ckptmerge.errors import CheckpointError

HEADS, KV_HEADS, HIDDEN = 4, 2, 16

KEY_MAP = """\
rename:
  - ['tok_embeddings\\.weight', 'model.embed_tokens.weight']
  - ['layers\\.(\\d+)\\.attention\\.wq\\.weight', 'model.layers.\\1.self_attn.q_proj.weight']
  - ['layers\\.(\\d+)\\.attention\\.wk\\.weight', 'model.layers.\\1.self_attn.k_proj.weight']
  - ['layers\\.(\\d+)\\.attention\\.wv\\.weight', 'model.layers.\\1.self_attn.v_proj.weight']
  - ['layers\\.(\\d+)\\.attention\\.wo\\.weight', 'model.layers.\\1.self_attn.o_proj.weight']
  - ['layers\\.(\\d+)\\.feed_forward\\.w1\\.weight', 'model.layers.\\1.mlp.gate_proj.weight']
  - ['layers\\.(\\d+)\\.feed_forward\\.w2\\.weight', 'model.layers.\\1.mlp.down_proj.weight']
  - ['layers\\.(\\d+)\\.feed_forward\\.w3\\.weight', 'model.layers.\\1.mlp.up_proj.weight']
  - ['layers\\.(\\d+)\\.attention_norm\\.weight', 'model.layers.\\1.input_layernorm.weight']
  - ['layers\\.(\\d+)\\.ffn_norm\\.weight', 'model.layers.\\1.post_attention_layernorm.weight']
  - ['norm\\.weight', 'model.norm.weight']
  - ['output\\.weight', 'lm_head.weight']
"""
PERMUTE = """\
permute:
  - ['model\\.layers\\.\\d+\\.self_attn\\.q_proj\\.weight', num_attention_heads]
  - ['model\\.layers\\.\\d+\\.self_attn\\.k_proj\\.weight', num_key_value_heads]
"""
TITAN = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}


def _titan_name(hf: str) -> str:
    for a, b in TITAN.items():
        hf = hf.replace(a, b)
    return hf.removeprefix("model.")


def _meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' convert_llama_weights_to_hf.py ``permute``, as written there."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def write_titan_llama(hf_dir: Path, titan_dir: Path, seed: int = 0) -> dict:
    """A tiny Llama (grouped-query attention) as transformers holds it (a folder at ``hf_dir``), and as
    torchtitan saves it: the same weights under torchtitan's names, ``wq``/``wk`` rows in Meta's order, in
    a DCP at ``titan_dir``. Returns both state dicts (``hf``, ``titan``: torchtitan's names, no prefix)."""
    import torch.distributed.checkpoint as dcp
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    titan: dict[str, torch.Tensor] = {}
    hf: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        meta = value.detach().clone()
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # Meta's order stored; transformers' = permute
            hf[name] = _meta_to_hf(meta, HEADS if "q_proj" in name else KV_HEADS).contiguous()
        else:
            hf[name] = meta
        titan[_titan_name(name)] = meta
    model.load_state_dict(hf)
    model.save_pretrained(hf_dir)
    dcp.save({"model": titan}, checkpoint_id=str(titan_dir), no_dist=True)
    return {"hf": hf, "titan": titan}


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("llama")
    states = write_titan_llama(tmp / "hf", tmp / "titan")
    (tmp / "rename.yaml").write_text(KEY_MAP)
    (tmp / "permute.yaml").write_text(KEY_MAP + PERMUTE)
    return {"tmp": tmp, **states}


def _reader(llama: dict, key_map: str):
    tmp = llama["tmp"]
    return open_native(tmp / "titan", "titan", tmp / "hf", key_map=KeyMap.load(tmp / key_map))


def test_permute_reads_torchtitan_q_and_k_rows_in_transformers_order(llama):
    reader = _reader(llama, "permute.yaml")
    assert sorted(reader.permutes) == sorted(k for k in llama["hf"] if k.endswith(("q_proj.weight", "k_proj.weight")))
    assert set(reader.permutes.values()) == {HEADS, KV_HEADS}
    for key, want in llama["hf"].items():
        assert torch.equal(reader.get(key), want), key
    # without the rule the names match but q/k rows are Meta's: not the model transformers runs
    plain = _reader(llama, "rename.yaml")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not plain.permutes and not torch.equal(plain.get(q), llama["hf"][q])


def test_dcp_written_back_puts_the_rows_in_the_inputs_order(llama, tmp_path):
    import torch.distributed.checkpoint as dcp

    reader = _reader(llama, "permute.yaml")
    names = {k: reader.raw_name(k) for k in reader.keys()}
    out = save_dcp(llama["tmp"] / "hf", tmp_path / "out", names, False, [], reader.permutes)
    state = {k: torch.empty_like(v) for k, v in llama["titan"].items()}
    dcp.load({"model": state}, checkpoint_id=str(out), no_dist=True)
    for key, want in llama["titan"].items():
        assert torch.equal(state[key], want), key


def test_permute_rule_with_a_bad_heads_field_is_one_line(llama, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(KEY_MAP + "permute:\n  - ['model\\.layers\\.\\d+\\.self_attn\\.q_proj\\.weight', n_heads]\n")
    with pytest.raises(CheckpointError, match="permute heads 'n_heads' is not a positive number"):
        open_native(llama["tmp"] / "titan", "titan", llama["tmp"] / "hf", key_map=KeyMap.load(bad))
    bad.write_text(KEY_MAP + "permute:\n  - ['x', 0]\n")
    with pytest.raises(CheckpointError, match=r"permute\[0\] must be \[regex, heads\]"):
        KeyMap.load(bad)


def test_save_dcp_without_permutes_writes_transformers_rows(llama, tmp_path: Path):
    """The inverse is applied only where the reader permuted: a plain key map's output is unchanged."""
    import torch.distributed.checkpoint as dcp

    reader = _reader(llama, "rename.yaml")
    names = {k: reader.raw_name(k) for k in reader.keys()}
    out = save_dcp(llama["tmp"] / "hf", tmp_path / "out", names, False, [])
    state = {k: torch.empty_like(v) for k, v in llama["titan"].items()}
    dcp.load({"model": state}, checkpoint_id=str(out), no_dist=True)
    for key, hf_key in ((reader.raw_name(k).removeprefix("model."), k) for k in reader.keys()):
        assert torch.equal(state[key], llama["hf"][hf_key]), key
