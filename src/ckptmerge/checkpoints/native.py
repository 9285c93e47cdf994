"""Training-native checkpoints (DeepSpeed ZeRO, PyTorch DCP) behind the reader interface of
:class:`~ckptmerge.checkpoints.reader.CheckpointReader`, under the transformers model's tensor names.

:func:`open_native` finds which format a folder holds; :class:`NativeReader` gives the merge stream, the
resident model, the content checks and the fingerprints what they ask of any reader: ``keys``,
``meta``, ``get`` (one tensor, read when asked for), ``nbytes``, ``close``. Its names are the model's
(``names.match_names``); the checkpoint's own are kept (:meth:`NativeReader.raw_name`). Unlike a
safetensors view, a tensor here is read into memory, so a caller holds as few as it can.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import torch

from ckptmerge.checkpoints.dcp import DcpReader, is_dcp
from ckptmerge.checkpoints.names import KeyMap, match_names, rotary_rows
from ckptmerge.checkpoints.reader import TensorMeta
from ckptmerge.checkpoints.zero import ZeroReader, find_tag
from ckptmerge.errors import CheckpointError


class _Raw(Protocol):
    format: str
    folder: Path

    def raw_meta(self) -> dict[str, TensorMeta]: ...
    def data_files(self) -> list[Path]: ...
    def load(self, key: str) -> torch.Tensor: ...


def detect(folder: Path) -> str | None:
    """``dcp``, ``zero`` or None (a transformers folder, or nothing this module reads)."""
    if is_dcp(folder):
        return "dcp"
    if find_tag(folder) is not None:
        return "zero"
    return None


def model_names(config_dir: Path, trust_remote_code: bool) -> tuple[list[str], list[str]]:
    """The transformers model's state-dict names and its parameter names (one per tied group), from its
    config alone: the model is built on the meta device, which allocates nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        cfg = AutoConfig.from_pretrained(config_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{config_dir}/config.json does not describe a transformers model ({msg})") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    return list(model.state_dict()), [n for n, _ in model.named_parameters()]


class NativeReader:
    """A ZeRO or DCP checkpoint under the model's tensor names (training state left out)."""

    def __init__(self, raw: _Raw, names: dict[str, str], permutes: dict[str, int] | None = None) -> None:
        self._raw, self.format, self.folder = raw, raw.format, raw.folder
        # Model name -> heads: tensors whose rows are stored in Meta's rotary order (key map ``permute``).
        self.permutes = dict(permutes or {})
        meta = raw.raw_meta()
        self._to_raw = {model: key for key, model in names.items()}
        self._meta = {model: meta[key] for key, model in names.items()}
        self.tag: str | None = getattr(raw, "tag", None)

    def keys(self) -> list[str]:
        return list(self._meta)

    def meta(self) -> dict[str, TensorMeta]:
        return dict(self._meta)

    def raw_name(self, key: str) -> str:
        """The checkpoint's own name of model tensor ``key``."""
        return self._to_raw[key]

    def get(self, key: str) -> torch.Tensor:
        if key not in self._meta:
            raise CheckpointError(f"{self.folder} has no tensor named {key}")
        t = self._raw.load(self._to_raw[key])
        m = self._meta[key]
        if tuple(t.shape) != m.shape or t.dtype != m.dtype:
            raise CheckpointError(
                f"{self.folder}: tensor {key} reads as {list(t.shape)} {t.dtype}, "
                f"its metadata says {list(m.shape)} {m.dtype}"
            )
        if key in self.permutes:
            t = rotary_rows(t, self.permutes[key])
        return t

    def byte_range(self, key: str) -> None:
        return None

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._meta.values())

    def data_files(self) -> list[Path]:
        return self._raw.data_files()

    def close(self) -> None:
        pass


def config_folder(folder: Path, tag: Path | None, fallback: str | None, label: str) -> Path:
    """Where a native checkpoint's config.json and tokenizer are: its folder (or, for a tag folder,
    the folder holding it, as an HF Trainer writes them), else ``model.config``."""
    for candidate in (folder, folder.parent if tag == folder else None):
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate
    if fallback:
        p = Path(fallback).expanduser()
        if not (p / "config.json").is_file():
            raise CheckpointError(f"model.config={fallback} has no config.json (it must be a transformers folder)")
        return p.resolve()
    raise CheckpointError(
        f"checkpoint {label} has no config.json: set model.config=PATH to a transformers folder holding "
        "the architecture (config.json) and tokenizer"
    )


def open_native(
    folder: Path,
    label: str,
    config_dir: Path,
    *,
    key_map: KeyMap | None = None,
    precision: str = "master",
    trust_remote_code: bool = False,
    names_cache: dict[str, tuple[list[str], list[str]]] | None = None,
) -> NativeReader:
    """The reader of the ZeRO or DCP checkpoint in ``folder``, under the model's names."""
    kind = detect(folder)
    raw: _Raw
    if kind == "dcp":
        raw = DcpReader(folder, label)
    elif kind == "zero":
        tag = find_tag(folder)
        assert tag is not None
        raw = ZeroReader(tag, label, precision)
    else:
        raise CheckpointError(f"{folder} is neither a DeepSpeed ZeRO nor a Distributed Checkpoint")
    cache = names_cache if names_cache is not None else {}
    sig = (Path(config_dir) / "config.json").read_text()
    if sig not in cache:
        cache[sig] = model_names(config_dir, trust_remote_code)
    model_keys, params = cache[sig]
    mapping = match_names(list(raw.raw_meta()), model_keys, params, key_map, label)
    permutes: dict[str, int] = {}
    if key_map is not None and key_map.permute:
        path = Path(config_dir) / "config.json"
        permutes = key_map.heads(mapping.values(), json.loads(sig), str(path))
    return NativeReader(raw, mapping, permutes)
