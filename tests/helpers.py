"""Small real checkpoints for I/O tests: tiny GPT-NeoX models written with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_neox(
    folder: Path,
    seed: int = 0,
    hidden: int = 16,
    layers: int = 2,
    dtype=torch.float32,
    safe: bool = True,
    shard: str | None = None,
) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=32,
    )
    model = GPTNeoXForCausalLM(cfg).to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    if not safe:  # a legacy pytorch_model.bin (transformers 5 only writes safetensors)
        from safetensors.torch import load_file

        st = Path(folder) / "model.safetensors"
        torch.save(load_file(str(st)), Path(folder) / "pytorch_model.bin")
        st.unlink()
    return Path(folder)
