"""Pretraining of a tiny GPT-NeoX (Pythia architecture) from scratch, saving intermediate checkpoints.

The learning rate is constant after a short linear warmup, with no decay: in that regime the
iterates keep bouncing around a valley floor, and averaging late checkpoints is known to help, which
is exactly what the merge search has to discover.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from ckptmerge.progress import interactive

from .tokenizer import save_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """The architecture knobs of the tiny model (the rest follows Pythia's defaults)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    seq_len: int


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; ``save_every`` steps a checkpoint ``step{N:05d}`` is written."""

    seed: int
    batch_size: int
    steps: int
    save_every: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint folder and the training loss around it."""

    name: str
    path: Path
    step: int
    loss: float  # loss of the batch at this step
    mean_loss: float  # mean loss over the steps since the previous checkpoint (less noisy)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimiser steps (Pythia's convention)."""
    return f"step{step:05d}"


def make_config(shape: ModelShape, tokenizer: PreTrainedTokenizerFast) -> GPTNeoXConfig:
    """A Pythia-style config: parallel residual, partial rotary, untied embeddings, no dropout."""
    return GPTNeoXConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        intermediate_size=4 * shape.hidden_size,
        # Rotary positions have no learned table; this is the longest context lm-eval may feed.
        max_position_embeddings=shape.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_blocks(stream: Sequence[int], seq_len: int) -> torch.Tensor:
    """Cut the token stream into non-overlapping ``seq_len`` blocks (the ragged tail is dropped)."""
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} training tokens do not fill one block of {seq_len}")
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def _batches(blocks: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless seeded epochs: each epoch is a fresh permutation of the blocks."""
    while True:
        order = torch.randperm(blocks.shape[0], generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield blocks[order[start : start + batch_size]]


def _lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then constant (no decay, on purpose)."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def pretrain(
    shape: ModelShape,
    settings: TrainSettings,
    tokenizer: PreTrainedTokenizerFast,
    train_stream: Sequence[int],
    out_dir: Path,
    progress: bool = True,
    on_save: Callable[[SavedCheckpoint], None] | None = None,
) -> list[SavedCheckpoint]:
    """Train from scratch; save a checkpoint (model + tokenizer) every ``save_every`` steps and at the end.

    Same seed, same data, same thread count and machine give bitwise identical checkpoints: the
    initialisation and the data order come from seeded generators, and no dropout is used.
    """
    torch.manual_seed(settings.seed)
    model = GPTNeoXForCausalLM(make_config(shape, tokenizer))
    model.train()
    blocks = make_blocks(train_stream, shape.seq_len)
    if blocks.shape[0] < settings.batch_size:
        raise ValueError(f"{blocks.shape[0]} blocks are fewer than one batch of {settings.batch_size}")
    logger.info(
        "pretraining %.2fM parameters on %d tokens (%d blocks, %.1f epochs)",
        sum(p.numel() for p in model.parameters()) / 1e6,
        blocks.numel(),
        blocks.shape[0],
        settings.steps * settings.batch_size / blocks.shape[0],
    )
    # Decay matrices only, as usual for transformers; norms and biases stay undecayed.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
        foreach=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings.warmup_steps))
    batches = _batches(blocks, settings.batch_size, torch.Generator().manual_seed(settings.seed))
    saved: list[SavedCheckpoint] = []
    interval_losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(1, settings.steps + 1), desc="pretraining", unit="step", disable=not progress or not interactive())
    for step in bar:
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        interval_losses.append(value)
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if step % settings.save_every == 0 or step == settings.steps:
            checkpoint = _save(model, tokenizer, out_dir, step, interval_losses)
            saved.append(checkpoint)
            interval_losses = []
            if on_save is not None:
                on_save(checkpoint)
    bar.close()
    logger.info("pretraining took %.1fs; saved %s", time.perf_counter() - started, [c.name for c in saved])
    return saved


@contextmanager
def _quiet_transformers_bars() -> Iterator[None]:
    """transformers 5 shows a "Writing model shards" bar per save, which breaks up our step bar."""
    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _save(
    model: GPTNeoXForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: Path,
    step: int,
    interval_losses: list[float],
) -> SavedCheckpoint:
    name = checkpoint_name(step)
    path = out_dir / name
    # transformers >= 5 always writes safetensors (the safe_serialization flag is gone); 4.x defaults to it.
    with _quiet_transformers_bars():
        model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{path} has no model.safetensors after save_pretrained")
    logger.debug("saved %s", path)
    return SavedCheckpoint(
        name=name,
        path=path,
        step=step,
        loss=interval_losses[-1],
        mean_loss=sum(interval_losses) / len(interval_losses),
    )
