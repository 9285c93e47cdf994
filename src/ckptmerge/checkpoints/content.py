"""What the checkpoints hold, checked before any trial: dtypes, order, tokenizers, finite and distinct weights.

:class:`CheckpointSet` checks that checkpoints *fit together* (architecture, tensor names, shapes,
dtypes). That is not enough for a merge to mean anything, and each gap below was measured to end a
whole search in a wrong registered model or a traceback:

* a dtype the merge cannot do (float8): a traceback mid-search or mid-write;
* the same checkpoint twice (another spelling of its path, a symlink, a copy): a pointless search;
* checkpoints newest-first: "gain vs newest alone" is measured against the older one;
* no tokenizer files: transformers builds an empty tokenizer and every trial scores 0;
* NaN/Inf weights: every trial that gives them weight fails, and the other checkpoint alone wins.

Cost: headers, a few small files, one tokenizer load per distinct tokenizer, then one streamed pass
over every tensor (cache-sized chunks of the memory maps, each chunk's pages dropped after use, so
memory stays flat whatever the size). The pass keeps one sum per chunk: finite sums mean finite
values, and the sums are a cheap content digest, confirmed byte for byte before two checkpoints are
called the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from ckptmerge.checkpoints import pages
from ckptmerge.checkpoints.checkpoint_set import Checkpoint, CheckpointSet
from ckptmerge.errors import CheckpointError

log = logging.getLogger(__name__)

ORDERS = ("check", "given")

# Floating dtypes the merge arithmetic supports (fp32 accumulation, cast back). float8 and the like
# have no arithmetic on a CPU; integer and bool tensors are not averaged but taken from the newest.
MERGEABLE_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
NEWEST_ONLY = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)

# Files that carry a vocabulary. tokenizer_config.json alone does not: without one of these,
# transformers builds a two-token tokenizer and every text scores 0 bits per byte.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Every file that can change what the loaded tokenizer does: identical bytes, identical tokenizer.
_TOKENIZER_SIDE = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")
# Fewer tokens than this is not a language model's vocabulary (a byte-level one has 256 and more).
MIN_VOCAB = 8

CHUNK_ELEMS = 1 << 20
SUM_ROW = 1 << 14  # below torch's parallel grain (32768): one thread sums each row

# Training steps in folder names and hub revisions: step00250, checkpoint-500, global_step500, iter_0000500.
_STEP_RE = re.compile(r".*?(?:global_step|checkpoint|step|iter)[-_]?(\d+)", re.IGNORECASE)


def step_from_name(name: str) -> int | None:
    """The training step a checkpoint folder or revision name ends with, e.g. ``step00250`` → 250."""
    m = _STEP_RE.fullmatch(name.strip().rstrip("/"))
    return int(m.group(1)) if m else None


def training_step(c: Checkpoint) -> int | None:
    """The checkpoint's step: ``trainer_state.json``'s ``global_step`` (what the trainer recorded),
    else the folder name (the revision, for a hub checkpoint), else None."""
    state = c.folder / "trainer_state.json"
    if not state.is_file():  # a tag folder of an HF Trainer checkpoint: the state is beside it
        state = c.config_dir / "trainer_state.json"
    if state.is_file():
        try:
            step = json.loads(state.read_text()).get("global_step")
            if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
                return step
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable state file says nothing; the name may
    step = step_from_name(c.ref.name)
    tag = getattr(c.reader, "tag", None)  # a DeepSpeed run folder named by its ``latest`` tag
    return step if step is not None or not tag else step_from_name(tag)


def _label(c: Checkpoint) -> str:
    return c.ref.text if c.ref.text else c.name


# -- headers -----------------------------------------------------------------------------------
def check_dtypes(cset: CheckpointSet) -> None:
    """Every tensor has a dtype the merge can handle (dtypes are equal across checkpoints already)."""
    meta = cset.meta()
    for key, m in meta.items():
        if m.dtype not in MERGEABLE_FLOATS and m.dtype not in NEWEST_ONLY:
            name = str(m.dtype).replace("torch.", "")
            raise CheckpointError(
                f"checkpoint {cset.newest.name}: tensor {key} has dtype {name}, which ckptmerge cannot merge "
                "(supported: float32, float16, bfloat16, float64; integer and bool tensors are taken from the newest)"
            )
    fixed = [k for k, m in meta.items() if m.dtype in NEWEST_ONLY]
    if fixed:
        log.info(
            "%d integer/bool tensors are not averaged: every merge takes them from the newest checkpoint %s (%s)",
            len(fixed),
            cset.newest.name,
            ", ".join(fixed[:3]) + (", ..." if len(fixed) > 3 else ""),
        )


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def check_distinct_folders(cset: CheckpointSet) -> None:
    """No folder is given twice, however its path is spelled (trailing slash, ``..``, a symlink)."""
    cs = cset.checkpoints
    for i in range(len(cs)):
        for j in range(i + 1, len(cs)):
            if _same_folder(cs[i].folder, cs[j].folder):
                raise CheckpointError(
                    f"checkpoints {_label(cs[i])} and {_label(cs[j])} are the same checkpoint (the same folder "
                    f"{cs[i].folder}); merging a checkpoint with itself changes nothing: list distinct checkpoints"
                )


def _order_hint(cset: CheckpointSet, steps: list[int]) -> str:
    shown = ", ".join(f"{c.name} (step {s})" for c, s in zip(cset.checkpoints, steps))
    return (
        f"checkpoints are not oldest first: {shown}; the last one is taken as the newest. List them "
        "oldest first, or set model.order=given to merge them in the given order"
    )


def training_steps(cset: CheckpointSet) -> list[int] | None:
    """Every checkpoint's step, or None when any is unknown."""
    steps = [training_step(c) for c in cset.checkpoints]
    if any(s is None for s in steps):
        unknown = [c.name for c, s in zip(cset.checkpoints, steps) if s is None]
        log.info(
            "Training step unknown for %s (no stepN/checkpoint-N/global_stepN/iter_N name, no trainer_state.json): "
            "the order oldest→newest is taken as given",
            ", ".join(unknown),
        )
        return None
    return steps  # type: ignore[return-value]


def check_order(cset: CheckpointSet, steps: list[int] | None, allow_equal: bool) -> None:
    """Steps increase oldest → newest. ``allow_equal``: equal steps are judged after the content pass
    (two spellings of one checkpoint have equal steps and deserve the "same checkpoint" error)."""
    if steps is None:
        return
    cs = cset.checkpoints
    for i, (a, b) in enumerate(zip(steps, steps[1:])):
        if b < a:
            raise CheckpointError(_order_hint(cset, steps))
        if b == a and not allow_equal:
            raise CheckpointError(
                f"checkpoints {cs[i].name} and {cs[i + 1].name} are both at training step {a}, so "
                "which is newer is unknown; set model.order=given to merge them in the given order"
            )


# -- tokenizers --------------------------------------------------------------------------------
def _tokenizer_files(folder: Path) -> list[Path]:
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()] + sorted(folder.glob("*.tiktoken"))


def _tokenizer_bytes_hash(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files + [folder / n for n in _TOKENIZER_SIDE if (folder / n).is_file()]:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _config_vocab_size(config: dict) -> int | None:
    v = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def check_tokenizers(cset: CheckpointSet, required: bool = True) -> None:
    """Each checkpoint has tokenizer files that load into a real vocabulary which fits the embeddings,
    the same in every checkpoint. One load per distinct set of tokenizer file bytes.

    ``required=False`` (``action=merge``, which scores nothing) lets a set where *no* checkpoint has
    tokenizer files through: a weights-only merge, as ``mergekit --no-copy-tokenizer`` writes. Some with
    and some without is still refused: the merged folder takes the newest's files.
    """
    if not required and not any(_tokenizer_files(c.config_dir) for c in cset.checkpoints):
        log.warning("No checkpoint has tokenizer files: the merged folder gets weights and config only")
        return
    from transformers import AutoTokenizer  # only here: a weights-only merge never imports transformers

    files = {c.name: _tokenizer_files(c.config_dir) for c in cset.checkpoints}
    for c in cset.checkpoints:  # every checkpoint's files first: a missing one is the likelier mistake
        if not files[c.name]:
            raise CheckpointError(
                f"checkpoint {_label(c)} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...) in "
                f"{c.config_dir}; "
                "without them transformers builds an empty tokenizer: copy them from the training run"
            )
    loaded: dict[str, tuple[int, dict]] = {}
    first: tuple[Checkpoint, int, dict] | None = None
    for c in cset.checkpoints:
        key = _tokenizer_bytes_hash(c.config_dir, files[c.name])
        if key not in loaded:
            try:
                tok = AutoTokenizer.from_pretrained(c.config_dir, trust_remote_code=cset.trust_remote_code)
                loaded[key] = (len(tok), tok.get_vocab())
            except Exception as e:  # tokenizers fail in many types; the message is what helps
                msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CheckpointError(f"checkpoint {_label(c)}: its tokenizer cannot be loaded ({msg})") from None
        n, vocab = loaded[key]
        if n < MIN_VOCAB:
            raise CheckpointError(
                f"checkpoint {_label(c)}: its tokenizer has only {n} tokens; the tokenizer files in "
                f"{c.config_dir} are incomplete"
            )
        size = _config_vocab_size(c.config)
        if size is not None and n > size:
            raise CheckpointError(
                f"checkpoint {_label(c)}: its tokenizer has {n} tokens but config.json vocab_size is "
                f"{size}; token ids past {size - 1} have no embedding (a tokenizer from another model?)"
            )
        if first is None:
            first = (c, n, vocab)
        elif vocab != first[2]:
            raise CheckpointError(
                f"checkpoints {first[0].name} and {c.name} have different tokenizers ({first[1]} vs {n} tokens)"
            )


# -- the streamed pass -------------------------------------------------------------------------
def _chunks(c: Checkpoint, key: str) -> Iterator[torch.Tensor]:
    flat = c.reader.get(key).reshape(-1)
    for s in range(0, flat.numel(), CHUNK_ELEMS):
        yield flat[s : s + CHUNK_ELEMS]


def _identical(a: Checkpoint, b: Checkpoint, keys: list[str]) -> bool:
    """Byte-for-byte equality of every tensor (NaN bits included), streamed like the scan."""
    for key in keys:
        for x, y in zip(_chunks(a, key), _chunks(b, key)):
            same = torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))
            pages.release([x, y])
            if not same:
                return False
    return True


def _same_everywhere(cset: CheckpointSet, key: str) -> bool:
    """The tensor holds the same values in every checkpoint (NaN never counts as the same)."""
    base = cset.checkpoints[0].reader.get(key)
    return all(torch.equal(base, c.reader.get(key)) for c in cset.checkpoints[1:])


def scan(cset: CheckpointSet, allow_nonfinite: bool, nonfinite_hint: str) -> list[str]:
    """One pass over every tensor of every checkpoint: finite floats, and a content digest per checkpoint.

    A tensor with NaN/Inf is refused (naming the checkpoint and the tensor) unless it is the same in
    every checkpoint (a constant buffer, e.g. a -inf attention mask stored in fp16: every merge keeps
    it as it is) or ``allow_nonfinite``. Returns the content digests, in checkpoint order.
    """
    meta = cset.meta()
    digests = [hashlib.sha256() for _ in cset.checkpoints]
    kept: list[str] = []
    for key, m in meta.items():
        bad: list[Checkpoint] = []
        for c, h in zip(cset.checkpoints, digests):
            finite = True
            for part in _chunks(c, key):
                total, ok = chunk_sum(part, m.dtype)
                finite = finite and ok
                h.update(struct.pack("<d", total))
                pages.release([part])
            if not finite:
                bad.append(c)
        if bad and judge_nonfinite(cset, key, bad, allow_nonfinite, nonfinite_hint):
            kept.append(key)
    log_kept(kept)
    return [h.hexdigest() for h in digests]


def chunk_sum(part: torch.Tensor, dtype: torch.dtype) -> tuple[float, bool]:
    """One chunk's term of the content digest, and whether the chunk is finite.

    One vectorised pass that serves both checks: a sum is finite iff every value is, unless finite
    values overflow it (then the exact test decides, as in stream.all_finite). The merge's own stream
    (:mod:`ckptmerge.checkpoints.inline_checks`) calls this too, so its digests are the scan's.
    """
    n = part.numel()
    if n == 0:
        return 0.0, True
    # A whole-tensor sum splits its work by the number of threads, so its rounding depends on the thread
    # that runs it (the merge stream's reader thread and the caller's need not agree). Rows of SUM_ROW
    # elements are each summed by one thread, and their few totals by one: the same bits on any thread.
    k = n // SUM_ROW
    terms = [part[: k * SUM_ROW].reshape(k, SUM_ROW).sum(dim=1)] if k else []
    if n % SUM_ROW:
        terms.append(part[k * SUM_ROW :].sum().reshape(1))
    total = float(torch.cat(terms).sum())
    if dtype.is_floating_point and not math.isfinite(total):
        return total, bool(torch.isfinite(part).all())
    return total, True


def judge_nonfinite(
    cset: CheckpointSet,
    key: str,
    bad: list[Checkpoint],
    allow_nonfinite: bool,
    nonfinite_hint: str,
    same: bool | None = None,
) -> bool:
    """Tensor ``key`` is NaN/Inf somewhere in ``bad`` (in checkpoint order): True when it is a constant
    buffer (the same in every checkpoint, ``same`` when the caller already knows), False when
    ``allow_nonfinite`` lets it through, else one-line refusal naming the first such checkpoint."""
    if _same_everywhere(cset, key) if same is None else same:
        return True
    if allow_nonfinite:
        log.warning(
            "Checkpoint %s has NaN or Inf in tensor %s; merged as it is (merge.allow_nonfinite=true)",
            bad[0].name,
            key,
        )
        return False
    raise CheckpointError(
        f"checkpoint {_label(bad[0])} has NaN or Inf in tensor {key}: every merge that gives "
        f"it weight is NaN there{nonfinite_hint}"
    )


def log_kept(kept: list[str]) -> None:
    if kept:
        log.info(
            "%d tensors hold the same NaN/Inf in every checkpoint (constant buffers, merged as they are): %s",
            len(kept),
            kept[:3],
        )


def check_distinct_content(cset: CheckpointSet, digests: list[str]) -> None:
    """No two checkpoints hold the same weights (a copy): equal digests, confirmed byte for byte."""
    cs, keys = cset.checkpoints, list(cset.meta())
    for i in range(len(cs)):
        for j in range(i + 1, len(cs)):
            if digests[i] == digests[j] and _identical(cs[i], cs[j], keys):
                raise CheckpointError(
                    f"checkpoints {_label(cs[i])} and {_label(cs[j])} are the same checkpoint (identical weights); "
                    "merging a checkpoint with itself changes nothing: list distinct checkpoints"
                )


def check_content(
    cset: CheckpointSet,
    *,
    order: str = "check",
    allow_nonfinite: bool = False,
    nonfinite_hint: str = "",
    tokenizer_required: bool = True,
) -> None:
    """All content checks, cheapest first; the first problem ends the run with one line.

    ``order``: ``check`` refuses checkpoints whose known training steps do not increase oldest → newest;
    ``given`` takes the order as given. ``allow_nonfinite`` lets NaN/Inf weights through (``action=merge``
    with ``merge.allow_nonfinite=true``); ``nonfinite_hint`` ends the NaN error (how to override, if one can).
    ``tokenizer_required``: see :func:`check_tokenizers`.
    """
    steps = check_before_reading(cset, order=order, tokenizer_required=tokenizer_required)
    digests = scan(cset, allow_nonfinite, nonfinite_hint)
    check_after_reading(cset, digests, steps)


def check_before_reading(
    cset: CheckpointSet, *, order: str = "check", tokenizer_required: bool = True
) -> list[int] | None:
    """The checks that read no tensor data (dtypes, folders, order, tokenizers); returns the training
    steps (None when unknown or ``order=given``) for :func:`check_after_reading`."""
    if order not in ORDERS:
        raise CheckpointError(f"model.order={order!r} is not valid (choose from: {', '.join(ORDERS)})")
    check_dtypes(cset)
    check_distinct_folders(cset)
    steps = training_steps(cset) if order == "check" else None
    check_order(cset, steps, allow_equal=True)
    check_tokenizers(cset, required=tokenizer_required)
    return steps


def check_after_reading(cset: CheckpointSet, digests: list[str], steps: list[int] | None) -> None:
    """The checks that need the content digests of one pass over the data (the scan's or the merge's)."""
    check_distinct_content(cset, digests)
    check_order(cset, steps, allow_equal=False)
    log.info(
        "Checked the content of %d checkpoints: mergeable dtypes, tokenizers, finite and distinct weights%s",
        len(cset),
        ", oldest first" if steps else "",
    )
