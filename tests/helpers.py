"""Small real checkpoints for I/O tests (tiny GPT-NeoX models written with save_pretrained), and a
read-only look into a search's sqlite store while it runs."""

from __future__ import annotations

import sqlite3
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


def count_finished_trials(db: Path) -> int:
    """FINISHED trial runs in the sqlite store ``db``, read directly and read-only: an MLflow client here
    would race the running search (or watcher) to create the tables."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(
                "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                "where t.key = 'ckptmerge.kind' and t.value = 'trial' and r.status = 'FINISHED'"
            ).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0
