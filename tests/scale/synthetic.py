"""Synthetic checkpoints shaped exactly like Pythia (GPT-NeoX), with random values, written streaming.

Real Pythia checkpoints carry, besides the parameters, three buffers per layer that older
transformers saved: ``attention.bias`` (the causal mask, bool ``[1, 1, max_pos, max_pos]``),
``attention.masked_bias`` (``-1e9``, which a ``.half()`` conversion turns into ``-inf``) and
``attention.rotary_emb.inv_freq``. mergekit's GPT-NeoX architecture requires all three, and the
``-inf`` mask exercises the writer's "non-finite values inherited from the sources" rule.

Files are written tensor by tensor at offsets planned up front (``ckptmerge.checkpoints.layout``), so
a 14 GB checkpoint is generated in constant memory. Used by ``tests/scale`` (tiny shapes) and by
``benchmarks/`` (Pythia-1B and 6.9B shapes).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ckptmerge.checkpoints.layout import SAFE_INDEX, index_json, plan_shards
from ckptmerge.checkpoints.reader import TensorMeta


@dataclass(frozen=True)
class NeoXShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_pos: int
    rotary_pct: float = 0.25


SHAPES = {
    "tiny": NeoXShape(hidden=64, layers=2, heads=4, intermediate=256, vocab=96, max_pos=64),
    "pythia-160m": NeoXShape(hidden=768, layers=12, heads=12, intermediate=3072, vocab=50304, max_pos=2048),
    "pythia-70m": NeoXShape(hidden=512, layers=6, heads=8, intermediate=2048, vocab=50304, max_pos=2048),
    "pythia-1b": NeoXShape(hidden=2048, layers=16, heads=8, intermediate=8192, vocab=50304, max_pos=2048),
    "pythia-6.9b": NeoXShape(hidden=4096, layers=32, heads=32, intermediate=16384, vocab=50432, max_pos=2048),
}


def neox_tensors(s: NeoXShape, dtype: torch.dtype = torch.float16) -> dict[str, TensorMeta]:
    """Every tensor of a Pythia checkpoint, in its order, with shape and dtype."""
    h, rot = s.hidden, int(s.hidden // s.heads * s.rotary_pct)
    out = {"gpt_neox.embed_in.weight": TensorMeta((s.vocab, h), dtype)}
    for i in range(s.layers):
        p = f"gpt_neox.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": TensorMeta((h,), dtype),
                p + "input_layernorm.bias": TensorMeta((h,), dtype),
                p + "post_attention_layernorm.weight": TensorMeta((h,), dtype),
                p + "post_attention_layernorm.bias": TensorMeta((h,), dtype),
                p + "attention.bias": TensorMeta((1, 1, s.max_pos, s.max_pos), torch.bool),
                p + "attention.masked_bias": TensorMeta((), dtype),
                p + "attention.rotary_emb.inv_freq": TensorMeta((rot // 2,), dtype),
                p + "attention.query_key_value.weight": TensorMeta((3 * h, h), dtype),
                p + "attention.query_key_value.bias": TensorMeta((3 * h,), dtype),
                p + "attention.dense.weight": TensorMeta((h, h), dtype),
                p + "attention.dense.bias": TensorMeta((h,), dtype),
                p + "mlp.dense_h_to_4h.weight": TensorMeta((s.intermediate, h), dtype),
                p + "mlp.dense_h_to_4h.bias": TensorMeta((s.intermediate,), dtype),
                p + "mlp.dense_4h_to_h.weight": TensorMeta((h, s.intermediate), dtype),
                p + "mlp.dense_4h_to_h.bias": TensorMeta((h,), dtype),
            }
        )
    out["gpt_neox.final_layer_norm.weight"] = TensorMeta((h,), dtype)
    out["gpt_neox.final_layer_norm.bias"] = TensorMeta((h,), dtype)
    out["embed_out.weight"] = TensorMeta((s.vocab, h), dtype)
    return out


def _values(key: str, m: TensorMeta, gen: torch.Generator, start: int, n: int, s: NeoXShape) -> torch.Tensor:
    """Elements ``[start, start + n)`` of tensor ``key`` (flat), random where the real ones are trained."""
    if key.endswith("attention.bias"):
        mp = s.max_pos
        idx = torch.arange(start, start + n)
        return (idx % mp) <= (idx // mp % mp)  # causal: column <= row
    if key.endswith("masked_bias"):
        return torch.tensor([-1e9]).to(m.dtype)
    if key.endswith("inv_freq"):
        rot = 2 * m.numel
        return (1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)).to(m.dtype)
    if "layernorm" in key or "layer_norm" in key:
        base = 1.0 if key.endswith("weight") else 0.0
        return (base + 0.05 * torch.randn(n, generator=gen)).to(m.dtype)
    return (0.02 * torch.randn(n, generator=gen)).to(m.dtype)


def write_neox_checkpoint(
    folder: Path,
    shape: str | NeoXShape,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
    shard_bytes: int = 1 << 30,
    tokenizer_from: Path | None = None,
    fmt: str = "safetensors",
    chunk: int = 1 << 24,
) -> Path:
    """A transformers GPT-NeoX folder (config, weights, optional tokenizer files) with random values."""
    from transformers import GPTNeoXConfig

    s = SHAPES[shape] if isinstance(shape, str) else shape
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = GPTNeoXConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=s.intermediate,
        max_position_embeddings=s.max_pos,
        rotary_pct=s.rotary_pct,
        tie_word_embeddings=False,
    )
    cfg.architectures = ["GPTNeoXForCausalLM"]
    cfg.dtype = str(dtype).replace("torch.", "")
    cfg.save_pretrained(folder)
    meta = neox_tensors(s, dtype)
    order = {k: i for i, k in enumerate(meta)}
    gen = torch.Generator()

    def start(key: str) -> torch.Generator:  # one stream per tensor: the same values in any file layout
        return gen.manual_seed(seed * 1_000_003 + order[key])

    if fmt == "bin":  # small shapes only: a legacy pytorch_model.bin, saved whole
        state = {k: _values(k, m, start(k), 0, m.numel, s).reshape(m.shape) for k, m in meta.items()}
        torch.save(state, folder / "pytorch_model.bin")
    else:
        shards = plan_shards(meta, {k: m.dtype for k, m in meta.items()}, shard_bytes)
        for shard in shards:
            with open(folder / shard.name, "wb") as f:
                f.write(shard.header)
                for p in sorted(shard.tensors, key=lambda p: p.offset):
                    m = meta[p.key]
                    start(p.key)
                    for a in range(0, max(m.numel, 1), chunk):
                        n = min(chunk, m.numel - a)
                        f.write(_values(p.key, m, gen, a, n, s).reshape(-1).view(torch.uint8).numpy().tobytes())
                assert f.tell() == shard.size, (shard.name, f.tell(), shard.size)
        index = index_json(shards)
        if index is not None:
            (folder / SAFE_INDEX).write_text(index)
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
            if (Path(tokenizer_from) / name).is_file():
                shutil.copy2(Path(tokenizer_from) / name, folder / name)
    return folder


def folder_bytes(folder: Path) -> int:
    """Bytes of a checkpoint folder's weight files."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())


def drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget a folder's cached pages (best effort, so timings start cold)."""
    for p in Path(folder).rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def write_json(path: Path, obj: object) -> None:
    Path(path).write_text(json.dumps(obj, indent=2))
