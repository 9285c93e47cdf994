"""Tensor names of a training-native checkpoint (ZeRO, DCP) matched to the transformers model's names.

A checkpoint written from the transformers model itself (HF Trainer, accelerate) already carries the
model's names, maybe under one wrapper prefix (``model.`` of a ``{"model": ..., "optimizer": ...}``
state, ``module.`` of a DDP wrapper): those match as they are, the prefix stripped only when that makes
them match. Any other layout (torchtitan, Megatron) needs ``model.key_map=FILE``, a YAML file::

    drop:                      # regexes (full match) of checkpoint names that are not model state
      - 'freqs_cis'
    rename:                    # ordered [regex, replacement] pairs; the first full match renames a name
      - ['tok_embeddings\\.weight', 'model.embed_tokens.weight']
      - ['layers\\.(\\d+)\\.attention\\.wq\\.weight', 'model.layers.\\1.self_attn.q_proj.weight']
    permute:                   # [regex of a model name, heads]: q/k rows in Meta's rotary order
      - ['model\\.layers\\.\\d+\\.self_attn\\.q_proj\\.weight', num_attention_heads]
      - ['model\\.layers\\.\\d+\\.self_attn\\.k_proj\\.weight', num_key_value_heads]

``heads`` is a number or a ``config.json`` field naming one. A permuted tensor is read in transformers'
row order (the permutation transformers' own Llama conversion applies) and written back in the
checkpoint's own (``merge.output_format=dcp``).

Names left unmatched, or model parameters left without a tensor, end the run with one line naming the
first few, so a wrong map never merges half a model. Optimizer and other training state (names under
``optimizer.``, ``optim.``, ``lr_scheduler.``, ...) are never read.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ckptmerge.errors import CheckpointError

if TYPE_CHECKING:
    import torch

# Top-level entries of a training state that are not the model (torchtitan, accelerate, OLMo-core).
TRAINING_STATE_PREFIXES = (
    "optimizer.",
    "optim.",
    "optimizer_state.",
    "optim_state.",
    "lr_scheduler.",
    "scheduler.",
    "dataloader.",
    "train_state.",
    "rng_state.",
    "trainer.",
)
# Wrappers a training loop puts around the model's own names; tried only when they make names match.
WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.", "model.module.", "app.model.")


@dataclass(frozen=True)
class KeyMap:
    """Ordered rename rules, names to drop and rotary rows to permute, from ``model.key_map``."""

    rename: tuple[tuple[re.Pattern, str], ...]
    drop: tuple[re.Pattern, ...]
    source: str
    permute: tuple[tuple[re.Pattern, int | str], ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> KeyMap:
        import yaml

        p = Path(path).expanduser()
        label = f"model.key_map={path}"
        try:
            data = yaml.safe_load(p.read_text())
        except OSError as e:
            raise CheckpointError(f"{label} cannot be read ({e.strerror or e})") from None
        except yaml.YAMLError as e:
            raise CheckpointError(f"{label} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict) or set(data) - {"rename", "drop", "permute"} or not data:
            raise CheckpointError(
                f"{label} must be a mapping with 'rename' (a list of [regex, replacement]), 'drop' and 'permute'"
            )
        rename, drop = [], []
        for i, rule in enumerate(data.get("rename") or []):
            if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and all(isinstance(x, str) for x in rule)):
                raise CheckpointError(f"{label}: rename[{i}] must be [regex, replacement], got {rule!r}")
            rename.append((_compile(rule[0], f"{label}: rename[{i}]"), rule[1]))
        for i, rule in enumerate(data.get("drop") or []):
            if not isinstance(rule, str):
                raise CheckpointError(f"{label}: drop[{i}] must be a regex, got {rule!r}")
            drop.append(_compile(rule, f"{label}: drop[{i}]"))
        permute: list[tuple[re.Pattern, int | str]] = []
        for i, rule in enumerate(data.get("permute") or []):
            ok = isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)
            heads = rule[1] if ok else None
            if (
                not ok
                or isinstance(heads, bool)
                or not (isinstance(heads, str) or (isinstance(heads, int) and heads > 0))
            ):
                raise CheckpointError(
                    f"{label}: permute[{i}] must be [regex, heads] (a number or a config.json field), got {rule!r}"
                )
            permute.append((_compile(rule[0], f"{label}: permute[{i}]"), heads))
        return cls(tuple(rename), tuple(drop), str(path), tuple(permute))

    def heads(self, model_keys: Collection[str], config: dict, config_path: str) -> dict[str, int]:
        """Model name → attention heads of every tensor a ``permute`` rule matches (the first rule wins)."""
        out: dict[str, int] = {}
        for key in model_keys:
            for pattern, heads in self.permute:
                if pattern.fullmatch(key):
                    n = config.get(heads) if isinstance(heads, str) else heads
                    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
                        raise CheckpointError(
                            f"model.key_map={self.source}: permute heads {heads!r} is not a positive number "
                            f"in {config_path}"
                        )
                    out[key] = n
                    break
        return out

    def apply(self, key: str) -> str | None:
        """The model name of checkpoint name ``key``; None when it is dropped."""
        if any(p.fullmatch(key) for p in self.drop):
            return None
        for pattern, repl in self.rename:
            m = pattern.fullmatch(key)
            if m:
                return m.expand(repl)
        return key


def rotary_rows(t: torch.Tensor, heads: int, inverse: bool = False) -> torch.Tensor:
    """Rows of a q/k projection from Meta's interleaved rotary order to transformers' (each head's
    pairs (0, 1), (2, 3), ... become halves), as transformers' Llama conversion permutes them; ``inverse``
    goes back. A copy of the tensor (the transpose is not a view of contiguous rows)."""
    rows = t.shape[0]
    if t.dim() != 2 or rows % (2 * heads):
        raise CheckpointError(f"cannot permute a tensor of shape {list(t.shape)} over {heads} heads")
    half = rows // heads // 2
    shape = (heads, 2, half, t.shape[1]) if inverse else (heads, half, 2, t.shape[1])
    return t.reshape(shape).transpose(1, 2).reshape(rows, t.shape[1]).contiguous()


def _compile(text: str, where: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise CheckpointError(f"{where}: {text!r} is not a valid regex ({e})") from None


def _first(names: Collection[str], n: int = 3) -> str:
    shown = sorted(names)[:n]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def match_names(
    keys: Sequence[str],
    model_keys: Collection[str],
    required: Collection[str],
    key_map: KeyMap | None,
    label: str,
) -> dict[str, str]:
    """Checkpoint name → model name for every model tensor of the checkpoint (training state left out).

    ``model_keys``: the model's state-dict names; ``required``: those that must come from the checkpoint
    (its parameters, one name per tied group). Raises one line when a checkpoint name matches no model
    name, or a required one has no tensor.
    """
    model_keys = set(model_keys)
    model_state = [k for k in keys if not k.startswith(TRAINING_STATE_PREFIXES)]
    if not model_state:
        raise CheckpointError(
            f"checkpoint {label} holds no model tensors, only training state ({_first(keys)}): "
            "are these optimizer-only shards?"
        )
    mapping = _best_prefix(model_state, model_keys, key_map)
    if key_map is not None:
        hint = f"fix the rules in model.key_map={key_map.source}"
    else:
        hint = "give model.key_map=FILE to rename them (docs/checkpoints-and-tasks.md)"
    unmatched = [k for k, v in mapping.items() if v not in model_keys]
    if unmatched:
        raise CheckpointError(
            f"checkpoint {label}: {len(unmatched)} tensors match no tensor of the model ({_first(unmatched)}); {hint}"
        )
    seen: dict[str, str] = {}
    for k, v in mapping.items():
        if v in seen:
            raise CheckpointError(f"checkpoint {label}: tensors {seen[v]} and {k} both become model tensor {v}; {hint}")
        seen[v] = k
    missing = [k for k in required if k not in seen]
    if missing:
        raise CheckpointError(f"checkpoint {label} lacks {len(missing)} model parameters ({_first(missing)}); {hint}")
    return mapping


def _best_prefix(keys: Sequence[str], model_keys: set[str], key_map: KeyMap | None) -> dict[str, str]:
    """Checkpoint name → model name: the names as they are, or with the one wrapper prefix stripped that
    makes the most of them match (after ``key_map``, if given; its rules see the stripped names)."""

    def rename(key: str) -> str | None:
        return key_map.apply(key) if key_map is not None else key

    best: dict[str, str] = {}
    score = -1
    for prefix in ("",) + WRAPPER_PREFIXES:
        # Entries outside the wrapper are other training state (e.g. a top-level "rng" tensor).
        inside = [k for k in keys if k.startswith(prefix)]
        mapping = {k: v for k in inside if (v := rename(k[len(prefix) :])) is not None}
        n = sum(v in model_keys for v in mapping.values())
        if n > score:
            best, score = mapping, n
    return best
