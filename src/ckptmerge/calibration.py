"""Statistics of checkpoints on calibration text, for Fisher averaging and RegMean.

Calibration text is train-distribution text that is never a dev or test document (the embedded
trajectory writes ``calib.jsonl``); it is read from a JSONL file with a ``text`` field.

* **Fisher**: the empirical diagonal Fisher, ``F = mean over sequences of (∂/∂θ log p(sequence))²``
  where ``log p`` is the mean next-token log-likelihood of one calibration sequence of up to
  ``max_length`` tokens, with the true next tokens as labels (not sampled ones). Sequences are
  taken in order until ``tokens`` tokens are used.
* **Gram**: for every ``nn.Linear`` of the model, ``G = Σ x·xᵀ`` over all calibration tokens of the
  layer's inputs (forward hooks), the statistic RegMean needs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ckptmerge.errors import ConfigError

log = logging.getLogger(__name__)


def read_texts(path: Path) -> list[str]:
    """Texts of a JSONL file (``text`` field) or, for any other file, its paragraphs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"calibration text not found: {path}")
    if path.suffix == ".jsonl":
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    else:
        texts = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
    if not texts:
        raise ConfigError(f"calibration text {path} is empty")
    return texts


def sequences(tokenizer: Any, texts: list[str], tokens: int, max_length: int) -> Iterator[torch.Tensor]:
    """Token id sequences (1, L ≤ max_length), each a document prefixed by BOS if the tokenizer has one."""
    used = 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for text in texts:
        ids = (bos + tokenizer(text, add_special_tokens=False)["input_ids"])[:max_length]
        if len(ids) < 2:
            continue
        ids = ids[: max(2, min(len(ids), tokens - used + 1))]
        yield torch.tensor([ids])
        used += len(ids) - 1
        if used >= tokens:
            return


def diagonal_fisher(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], tokens: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of ``model``'s parameters (name → tensor, fp32, on the CPU)."""
    params = {n: p for n, p in model.named_parameters()}
    fisher = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items()}
    count = 0
    device = next(model.parameters()).device
    with torch.enable_grad():
        for p in params.values():
            p.requires_grad_(True)
        for ids in sequences(tokenizer, texts, tokens, max_length):
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids.to(device), labels=ids.to(device))
            out.loss.backward()  # loss = −mean log-likelihood; its square gradient is the same
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n].add_(p.grad.detach().float().cpu() ** 2)
            count += 1
    model.zero_grad(set_to_none=True)
    if count == 0:
        raise ConfigError("calibration text gave no usable sequence")
    return {n: f / count for n, f in fisher.items()}


@torch.no_grad()
def linear_input_grams(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], tokens: int, max_length: int
) -> dict[str, torch.Tensor]:
    """``Σ x·xᵀ`` of the inputs of every ``nn.Linear`` (module name → (in, in) fp64 tensor)."""
    grams: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(module: torch.nn.Module, args: tuple, _out: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double().cpu()
            grams[name] = grams.get(name, torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)) + x.T @ x

        return fn

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(hook(name)))
    device = next(model.parameters()).device
    try:
        n = 0
        for ids in sequences(tokenizer, texts, tokens, max_length):
            model(input_ids=ids.to(device))
            n += 1
    finally:
        for h in hooks:
            h.remove()
    if n == 0:
        raise ConfigError("calibration text gave no usable sequence")
    return grams
