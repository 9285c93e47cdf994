"""What a merged folder says to the tools around ckptmerge: a Hugging Face model card and a mergekit config."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ckptmerge.interop.facts import MergeFacts


def folder_files(facts: MergeFacts) -> dict[str, str]:
    """The files a merged folder carries besides weights, config and tokenizer: ``README.md`` (model card)
    and, for a linear merge, ``mergekit_config.yml``. Written inside the folder's atomic publish."""
    from ckptmerge.interop.mergekit import CONFIG_FILE, mergekit_yaml
    from ckptmerge.interop.model_card import CARD_FILE, model_card

    files = {CARD_FILE: model_card(facts)}
    if facts.method == "linear":
        files[CONFIG_FILE] = mergekit_yaml(
            [c["model"] for c in facts.checkpoints], list(facts.weights.values()), facts.out_dtype, facts.in_dtype
        )
    return files


def update_card(folder: Path, facts: MergeFacts) -> None:
    """Replace the published folder's model card with one that knows more (test results, registered
    version, learnt after the folder was published). A sibling file renamed over the old card: a
    reader sees the old card or the new one, never half of one."""
    from ckptmerge.interop.model_card import CARD_FILE, model_card

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CARD_FILE}.", suffix=".partial")
    try:
        mask = os.umask(0o022)  # reading the umask sets it: set it straight back
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # as open() makes the card it replaces (mkstemp's is owner-only)
        with os.fdopen(fd, "w") as fh:
            fh.write(model_card(facts))
        os.replace(tmp, Path(folder) / CARD_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
