"""mergekit configurations: written beside every linear merge, and read by ``action=merge``.

The two tools share one method, ``linear``: Σ wᵢ·θᵢ in fp32, cast back. mergekit (0.1.x) loads each
tensor in ``dtype`` (default: as stored), merges in fp32 (``addcmul`` into zeros, then divides by Σ wᵢ
unless ``normalize: false``) and casts the result back to the loaded dtype, then to ``out_dtype``. So
the config written here sets ``normalize: false`` (our weights already sum to 1; dividing by their fp32
sum could move a value by an ulp), loads in fp32 only when the output dtype differs from the inputs'
(fp16/bf16 → fp32 is exact) and names the output dtype. ``mergekit-yaml mergekit_config.yml OUT``
then writes the same tensors within one ulp (``tests/scale/test_mergekit_config.py`` runs it).

Reading is a strict subset of mergekit's schema, parsed here rather than by mergekit (a dev-only
dependency): a linear merge of whole models with one scalar weight each. Anything else (another
method, slices, per-tensor weights, LoRA ``model+adapter`` references) is refused with one line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ckptmerge.errors import ConfigError

CONFIG_FILE = "mergekit_config.yml"  # the name mergekit itself gives the config it copies into its output
KEY = "merge.mergekit_config"
# mergekit keys a linear merge of whole models may carry; what they change is handled below.
# (tokenizer_source is refused: "union" rebuilds the embeddings, which a plain weighted sum does not.)
_TOP_KEYS = {"merge_method", "models", "parameters", "dtype", "out_dtype", "base_model", "name"}
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def mergekit_yaml(models: Sequence[str], weights: Sequence[float], out_dtype: str | None, in_dtype: str | None) -> str:
    """A mergekit config for the linear merge of ``models`` (oldest first) with ``weights``.

    ``out_dtype`` None means the inputs' dtype; ``in_dtype`` is the inputs' dtype (to decide whether
    mergekit must load them in fp32 to merge into a different output dtype exactly as we do).
    """
    config: dict[str, Any] = {
        "merge_method": "linear",
        "parameters": {"normalize": False},
        "models": [{"model": str(m), "parameters": {"weight": float(w)}} for m, w in zip(models, weights)],
    }
    if out_dtype is not None and out_dtype != in_dtype:
        config["dtype"] = "float32"
        config["out_dtype"] = out_dtype
    header = (
        "# The same linear merge for mergekit (https://github.com/arcee-ai/mergekit), written by ckptmerge:\n"
        "#   mergekit-yaml mergekit_config.yml OUTPUT_DIR\n"
        "# or, with ckptmerge: ckptmerge action=merge merge.mergekit_config=mergekit_config.yml "
        "merge.output_dir=OUTPUT_DIR\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


@dataclass(frozen=True)
class LinearRecipe:
    """What ``action=merge`` needs from a mergekit config: checkpoints (oldest first), weights, dtype."""

    models: tuple[str, ...]
    weights: tuple[float, ...]
    dtype: str  # auto | float32 | float16 | bfloat16 (merge.dtype)


def _dtype(value: Any, key: str) -> str:
    if value not in _DTYPES:
        raise ConfigError(f"{KEY}: {key}={value!r} is not one of {sorted(set(_DTYPES.values()))}")
    return _DTYPES[value]


def _weight(params: Any, where: str) -> float | None:
    if params is None:
        return None
    if not isinstance(params, Mapping):
        raise ConfigError(f"{KEY}: {where}.parameters must be a mapping")
    extra = sorted(set(params) - {"weight", "normalize"})
    if extra:
        raise ConfigError(
            f"{KEY}: {where}.parameters.{extra[0]} is not supported (a linear merge takes weight and normalize)"
        )
    w = params.get("weight")
    if w is None:
        return None
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ConfigError(
            f"{KEY}: {where}.parameters.weight must be one number for the whole model, got {w!r} "
            "(per-tensor weights are not supported)"
        )
    return float(w)


def read_linear(path: str | Path) -> LinearRecipe:
    """Parse a mergekit config into a :class:`LinearRecipe`, or raise a one-line :class:`ConfigError`."""
    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"{KEY}={p}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{KEY}={p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{KEY}={p}: not a mergekit config (expected a mapping with merge_method and models)")
    method = data.get("merge_method")
    if method != "linear":
        raise ConfigError(
            f"{KEY}: merge_method={method!r} is not supported; ckptmerge and mergekit share only 'linear'"
        )
    extra = sorted(set(data) - _TOP_KEYS)
    if extra:
        raise ConfigError(f"{KEY}: {extra[0]!r} is not supported (only a linear merge of whole models)")
    models = data.get("models")
    if not isinstance(models, list) or len(models) < 2:
        raise ConfigError(f"{KEY}: models must list at least 2 models")
    top = data.get("parameters") or {}
    default_w = _weight(top, "parameters")
    normalize = top.get("normalize", True) if isinstance(top, Mapping) else True
    refs, weights = [], []
    for i, m in enumerate(models):
        if not isinstance(m, Mapping) or not isinstance(m.get("model"), str):
            raise ConfigError(f"{KEY}: models[{i}] must be a mapping with a 'model' path or repo")
        ref = m["model"]
        if "+" in ref:
            raise ConfigError(f"{KEY}: models[{i}].model={ref!r} applies a LoRA adapter, which is not supported")
        w = _weight(m.get("parameters"), f"models[{i}]")
        w = default_w if w is None else w
        if w is None:
            raise ConfigError(f"{KEY}: models[{i}] has no weight")
        if isinstance(m.get("parameters"), Mapping) and "normalize" in m["parameters"]:
            normalize = m["parameters"]["normalize"]
        refs.append(ref)
        weights.append(w)
    base = data.get("base_model")
    if base is not None and base not in refs:  # a linear merge ignores it unless it is one of the models
        raise ConfigError(f"{KEY}: base_model={base!r} is not one of the models; a linear merge has no base model")
    if normalize:  # mergekit's default divides by the sum, so weights 1, 1 mean 0.5, 0.5
        total = sum(weights)
        if total == 0:
            raise ConfigError(f"{KEY}: the weights sum to 0, which normalize cannot divide by")
        weights = [w / total for w in weights]
    # mergekit's output dtype: out_dtype, else the dtype the inputs were loaded in, else as stored.
    out = data.get("out_dtype") or data.get("dtype")
    dtype = "auto" if out is None else _dtype(out, "out_dtype" if data.get("out_dtype") else "dtype")
    return LinearRecipe(models=tuple(refs), weights=tuple(weights), dtype=dtype)
