"""Checkpoint references: a local folder or ``repo@revision`` on a model hub, resolved to a folder.

Hub checkpoints download only weights, config and tokenizer files into the standard hub cache
(``huggingface_hub.snapshot_download``); with ``HF_HUB_OFFLINE=1`` they load from that cache.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

# What a hub download fetches: weights, their indexes, configs and tokenizer files, nothing else.
HUB_ALLOW_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "*.py",  # remote-code models (Baichuan2) keep their modelling code here; only run with trust_remote_code
)

_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint as the user named it."""

    text: str
    path: Path | None = None
    repo: str | None = None
    revision: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.repo is not None

    @property
    def name(self) -> str:
        """Short identity used in logs, MLflow params (``weight.<name>``) and ``result.json``."""
        if self.is_hub:
            return self.revision or "main"
        assert self.path is not None
        return self.path.name


def parse_ref(text: str) -> CheckpointRef:
    """``/path/to/folder`` or ``./rel`` is local; ``owner/repo@revision`` (or ``owner/repo``) is hub.

    A string that exists on disk is always local, so local folders with ``@`` in the name work.
    """
    text = str(text).strip()
    p = Path(text).expanduser()
    # lexists: a symlink on disk is local even when it leads nowhere (dangling, or a loop).
    if p.exists() or os.path.lexists(p):
        return CheckpointRef(text=text, path=_resolve_local(p, text))
    repo, _, revision = text.partition("@")
    if _REPO_RE.match(repo) and not text.startswith((".", "/", "~")):
        return CheckpointRef(text=text, repo=repo, revision=revision or None)
    return CheckpointRef(text=text, path=_resolve_local(p, text))


def _resolve_local(p: Path, text: str) -> Path:
    """The absolute path with every symlink followed; a symlink loop is the user's to fix, not a traceback."""
    try:
        return p.resolve()
    except RuntimeError:  # Python < 3.13 raises this for a loop
        raise CheckpointError(f"checkpoint path is a symlink loop: {text}") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint path cannot be resolved: {text} ({e.strerror or e})") from None


def unique_names(refs: list[CheckpointRef]) -> list[str]:
    """Names for the refs, disambiguated with their parent folder or repo when two collide."""
    names = [r.name for r in refs]
    if len(set(names)) == len(names):
        return names
    out = []
    for r in refs:
        parent = (r.repo or "").split("/")[-1] if r.is_hub else (r.path.parent.name if r.path else "")
        out.append(f"{parent}-{r.name}" if parent else r.name)
    if len(set(out)) != len(out):
        out = [f"{i}-{n}" for i, n in enumerate(out)]
    return out


def resolve(ref: CheckpointRef) -> Path:
    """The local folder holding ``ref``: the folder itself, or the hub snapshot (downloaded if needed)."""
    if not ref.is_hub:
        assert ref.path is not None
        if not ref.path.exists():
            if ref.path.is_symlink():  # Python >= 3.13 resolves a loop to a path that is still a symlink
                raise CheckpointError(f"checkpoint path is a symlink loop: {ref.text}")
            raise CheckpointError(f"checkpoint folder does not exist: {ref.text}")
        if not ref.path.is_dir():
            raise CheckpointError(f"checkpoint is not a folder: {ref.text}")
        return ref.path
    return _snapshot(ref)


def _snapshot(ref: CheckpointRef) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    assert ref.repo is not None, "a hub reference names its repo"
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    log.info("Resolving %s@%s from the hub cache%s", ref.repo, ref.revision, " (offline)" if offline else "")
    try:
        folder = snapshot_download(
            repo_id=ref.repo,
            revision=ref.revision,
            allow_patterns=list(HUB_ALLOW_PATTERNS),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"checkpoint {ref.text} is not in the local hub cache and the hub cannot be reached"
        ) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"checkpoint {ref.text} could not be downloaded: {str(e).splitlines()[0]}") from None
    except Exception as e:  # network errors come in many types; the message is what helps
        raise CheckpointError(f"checkpoint {ref.text} could not be resolved: {str(e).splitlines()[0]}") from None
    return Path(folder)
