"""The ordered checkpoints of one search (oldest → newest), checked to be mergeable before anything runs."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ckptmerge.checkpoints.names import KeyMap
from ckptmerge.checkpoints.reader import CheckpointReader, TensorMeta, TensorReader
from ckptmerge.checkpoints.refs import CheckpointRef, parse_ref, resolve, unique_names
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

# Config keys that may differ along one trajectory without changing the architecture.
_CONFIG_KEYS_FREE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache", "_commit_hash"}


@dataclass(frozen=True)
class ReadOptions:
    """How to read training-native checkpoints (``model.key_map``, ``model.config``, ``model.precision``)."""

    key_map: str | None = None
    config: str | None = None
    precision: str = "auto"


@dataclass
class Checkpoint:
    """One resolved checkpoint: its ref, short name, folder and a lazy tensor reader.

    ``model_folder`` holds its config.json and tokenizer: the folder itself for a transformers folder,
    else where :func:`~ckptmerge.checkpoints.native.config_folder` found them (``model.config``)."""

    ref: CheckpointRef
    name: str
    folder: Path
    config: dict
    reader: TensorReader = field(repr=False)
    model_folder: Path | None = None

    def __post_init__(self) -> None:
        if self.model_folder is None:
            self.model_folder = self.folder

    @property
    def config_dir(self) -> Path:
        assert self.model_folder is not None
        return self.model_folder

    def identity(self) -> dict[str, str]:
        """What names this checkpoint in MLflow: source text, folder, and a fingerprint of its weights index."""
        h = hashlib.sha256()
        for key, m in sorted(self.reader.meta().items()):
            h.update(f"{key}:{m.shape}:{m.dtype}".encode())
        for f in self.reader.data_files():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}".encode())
        return {"source": self.ref.text, "folder": str(self.folder), "fingerprint": h.hexdigest()[:16]}


def _load_config(folder: Path, text: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {text} has no config.json in {folder}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"checkpoint {text}: config.json is not valid JSON ({e})") from None


def _tokenizer_signature(folder: Path) -> str | None:
    """Hash of the tokenizer files, so checkpoints with different vocabularies are refused."""
    files = [folder / n for n in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model")]
    present = [f for f in files if f.is_file()]
    if not present:
        return None
    h = hashlib.sha256()
    for f in present:
        if f.name == "tokenizer.json":  # compare the model (vocab, merges), not formatting or padding settings
            try:
                h.update(json.dumps(json.loads(f.read_text()).get("model"), sort_keys=True).encode())
                continue
            except ValueError:
                pass
        h.update(f.read_bytes())
    return h.hexdigest()


def _open(
    ref: CheckpointRef,
    name: str,
    folder: Path,
    opts: ReadOptions,
    key_map: KeyMap | None,
    trust_remote_code: bool,
    cache: dict,
) -> Checkpoint:
    """A transformers folder as it is; a ZeRO or DCP checkpoint through its native reader, with the
    config and tokenizer from its folder or ``model.config``."""
    from ckptmerge.checkpoints import native

    kind = native.detect(folder)
    has_hf_weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    # An HF Trainer + DeepSpeed checkpoint may hold both: model.precision=auto reads its transformers
    # weights as before; master or module asks for DeepSpeed's.
    if kind is None or (kind == "zero" and has_hf_weights and opts.precision == "auto"):
        if kind is None and opts.precision != "auto":
            raise CheckpointError(
                f"model.precision={opts.precision} needs a DeepSpeed checkpoint; {ref.text} is not one"
            )
        return Checkpoint(ref, name, folder, _load_config(folder, ref.text), CheckpointReader(folder))
    tag = native.find_tag(folder) if kind == "zero" else None
    config_dir = native.config_folder(folder, tag, opts.config, ref.text)
    reader = native.open_native(
        folder,
        ref.text,
        config_dir,
        key_map=key_map,
        precision="master" if opts.precision == "auto" else opts.precision,
        trust_remote_code=trust_remote_code,
        names_cache=cache,
    )
    return Checkpoint(ref, name, folder, _load_config(config_dir, ref.text), reader, model_folder=config_dir)


class CheckpointSet:
    """Checkpoints to merge, oldest first, verified to share architecture, tensor names, shapes and dtypes."""

    def __init__(self, checkpoints: Sequence[Checkpoint], trust_remote_code: bool = False) -> None:
        if len(checkpoints) < 2:
            raise CheckpointError(f"need at least 2 checkpoints to merge, got {len(checkpoints)}")
        self.checkpoints = list(checkpoints)
        self.trust_remote_code = trust_remote_code
        self._check_remote_code()
        self._check_compatible()

    @classmethod
    def from_refs(
        cls, texts: Sequence[str], trust_remote_code: bool = False, options: ReadOptions | None = None
    ) -> CheckpointSet:
        refs = [parse_ref(t) for t in texts]
        names = unique_names(refs)
        opts = options or ReadOptions()
        key_map = KeyMap.load(opts.key_map) if opts.key_map else None
        cache: dict = {}
        out = []
        for ref, name in zip(refs, names):
            folder = resolve(ref)
            out.append(_open(ref, name, folder, opts, key_map, trust_remote_code, cache))
        return cls(out, trust_remote_code=trust_remote_code)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checkpoints]

    @property
    def newest(self) -> Checkpoint:
        return self.checkpoints[-1]

    def __len__(self) -> int:
        return len(self.checkpoints)

    def meta(self) -> dict[str, TensorMeta]:
        """Tensor names, shapes and dtypes (shared by all checkpoints)."""
        return self.newest.reader.meta()

    def _check_remote_code(self) -> None:
        for c in self.checkpoints:
            if "auto_map" in c.config and not self.trust_remote_code:
                raise CheckpointError(
                    f"checkpoint {c.ref.text} needs remote code (config.json has auto_map); "
                    "set model.trust_remote_code=true only if you trust that repository's code"
                )

    def _check_compatible(self) -> None:
        base = self.checkpoints[0]
        base_cfg = {k: v for k, v in base.config.items() if k not in _CONFIG_KEYS_FREE}
        base_meta = base.reader.meta()
        base_tok = _tokenizer_signature(base.config_dir)
        for c in self.checkpoints[1:]:
            cfg = {k: v for k, v in c.config.items() if k not in _CONFIG_KEYS_FREE}
            if cfg != base_cfg:
                diff = sorted(k for k in set(cfg) | set(base_cfg) if cfg.get(k) != base_cfg.get(k))
                k = diff[0]
                raise CheckpointError(
                    f"checkpoints {base.name} and {c.name} have different architectures: config.json "
                    f"'{k}' is {base_cfg.get(k)!r} vs {cfg.get(k)!r}"
                )
            meta = c.reader.meta()
            only_a, only_b = sorted(set(base_meta) - set(meta)), sorted(set(meta) - set(base_meta))
            if only_a or only_b:
                which = f"{only_a[0]} only in {base.name}" if only_a else f"{only_b[0]} only in {c.name}"
                raise CheckpointError(f"checkpoints {base.name} and {c.name} have different tensors: {which}")
            for key, m in base_meta.items():
                o = meta[key]
                if o.shape != m.shape:
                    raise CheckpointError(
                        f"checkpoints {base.name} and {c.name} differ in shape of {key}: {list(m.shape)} vs "
                        f"{list(o.shape)}"
                    )
                if o.dtype != m.dtype:
                    raise CheckpointError(
                        f"checkpoints {base.name} and {c.name} differ in dtype of {key}: {m.dtype} vs {o.dtype}"
                    )
            tok = _tokenizer_signature(c.config_dir)
            if base_tok and tok and base_tok != tok:
                raise CheckpointError(f"checkpoints {base.name} and {c.name} have different tokenizers")
        log.info("Checked %d checkpoints: %d tensors each, same architecture", len(self), len(base_meta))
