"""Our lm-evaluation-harness tasks over the trajectory's held-out documents, with local JSONL data.

Five tasks are written into one folder (an lm-eval ``include_path``):

* ``ckptmerge_{dev,test}_bpb``: rolling log-likelihood of whole docstrings (like lm-eval's wikitext
  task), metrics ``word_perplexity``, ``byte_perplexity`` and ``bits_per_byte`` (lower is better);
* ``ckptmerge_{dev,test}_mc``: four-way continuation choice: a docstring's opening words as context,
  its true next words against the next words of three other docstrings of the same split
  (``acc``/``acc_norm``, higher is better);
* ``ckptmerge_test_ood_bpb``: the same perplexity metrics on out-of-domain text: Python *code* of
  stdlib functions and classes with docstrings and comments removed (see :mod:`.corpus`).

The YAML files name their data by absolute path (lm-eval resolves ``data_files`` against the working
directory, not the YAML); :func:`write_task_yamls` rewrites them if the folder ever moves.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .corpus import Document

logger = logging.getLogger(__name__)

DEV_TASKS: tuple[str, ...] = ("ckptmerge_dev_bpb", "ckptmerge_dev_mc")
TEST_TASKS: tuple[str, ...] = ("ckptmerge_test_bpb", "ckptmerge_test_mc", "ckptmerge_test_ood_bpb")

#: task name -> (kind, split name in lm-eval, data file inside the tasks folder)
TASK_FILES: dict[str, tuple[str, str, str]] = {
    "ckptmerge_dev_bpb": ("bpb", "validation", "dev.jsonl"),
    "ckptmerge_dev_mc": ("mc", "validation", "dev_mc.jsonl"),
    "ckptmerge_test_bpb": ("bpb", "test", "test.jsonl"),
    "ckptmerge_test_mc": ("mc", "test", "test_mc.jsonl"),
    "ckptmerge_test_ood_bpb": ("bpb", "test", "test_ood.jsonl"),
}

N_CHOICES = 4
_WHITESPACE = re.compile(r"\s")

# Aggregations and directions spelled out (lm-eval's defaults, which it otherwise warns about).
# bits_per_byte comes first: the first metric is what a search optimises unless eval.metrics says otherwise.
_BPB_BODY = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
should_decontaminate: true
doc_to_decontamination_query: "{{text}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""

_MC_BODY = """output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
should_decontaminate: true
doc_to_decontamination_query: "{{context}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is); returns the number of rows."""
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[dict]:
    """Read a file written by :func:`write_jsonl`."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def document_rows(documents: Sequence[Document]) -> list[dict]:
    """JSONL rows for perplexity tasks and plain text files: ``text`` plus where it came from."""
    return [{"text": d.text, "source": d.source, "line": d.line} for d in documents]


def _cut_at_space(text: str, low: int, high: int) -> int:
    """Index of the last whitespace in ``text[low:high]`` (a word boundary), else ``high`` (capped at the end)."""
    window = text[low:high]
    positions = [m.start() for m in _WHITESPACE.finditer(window)]
    return low + positions[-1] if positions else min(high, len(text))


def split_for_choice(
    text: str, prefix_chars: tuple[int, int] = (100, 180), cont_chars: tuple[int, int] = (60, 100)
) -> tuple[str, str]:
    """``(context, continuation)``: the opening words and the words right after, cut at spaces.

    The context ends before a space and the continuation starts after it, because lm-eval joins them
    with its default target delimiter, a single space.
    """
    # Leave room for a continuation of at least cont_chars[0] characters in short documents.
    high = min(prefix_chars[1], max(prefix_chars[0] + 20, len(text) - cont_chars[0]))
    cut = _cut_at_space(text, prefix_chars[0], high)
    context = text[:cut].rstrip()
    rest = text[cut:].lstrip()
    end = _cut_at_space(rest, cont_chars[0], cont_chars[1]) if len(rest) > cont_chars[1] else len(rest)
    return context, rest[:end].rstrip()


def multiple_choice_rows(documents: Sequence[Document], seed: int) -> list[dict]:
    """One four-way item per document; distractors are true continuations of other documents."""
    if len(documents) < N_CHOICES:
        raise ValueError(f"need at least {N_CHOICES} documents for multiple choice, got {len(documents)}")
    pairs = [split_for_choice(d.text) for d in documents]
    empty = [d.source for d, (_, answer) in zip(documents, pairs) if not answer]
    if empty:  # lm-eval rejects an empty continuation
        raise ValueError(f"documents too short for a continuation: {empty[:3]}")
    rng = random.Random(seed)
    rows = []
    for index, (document, (context, answer)) in enumerate(zip(documents, pairs)):
        others = [i for i in range(len(pairs)) if i != index and pairs[i][1] != answer]
        distractors: list[str] = []
        for other in rng.sample(others, len(others)):  # a seeded order; duplicates are skipped
            if pairs[other][1] not in distractors:
                distractors.append(pairs[other][1])
            if len(distractors) == N_CHOICES - 1:
                break
        if len(distractors) < N_CHOICES - 1:
            raise ValueError(f"not enough distinct continuations for {document.source}:{document.line}")
        label = rng.randrange(N_CHOICES)
        choices = distractors[:label] + [answer] + distractors[label:]
        rows.append({
            "context": context, "choices": choices, "label": label, "source": document.source, "line": document.line,
        })  # fmt: skip
    return rows


def task_yaml(name: str, data_path: Path) -> str:
    """The YAML text of task ``name`` reading ``data_path`` (absolute) as its only split."""
    kind, split, _ = TASK_FILES[name]
    return _yaml(name, kind, split, data_path)


def bpb_task_yaml(name: str, data_path: Path, split: str = "validation") -> str:
    """A bits-per-byte task like ours over any JSONL whose rows have a ``text`` field (e.g. a benchmark's)."""
    return _yaml(name, "bpb", split, data_path)


def _yaml(name: str, kind: str, split: str, data_path: Path) -> str:
    split_key = "validation_split" if split == "validation" else "test_split"
    # json.dumps gives a quoted string that YAML reads back unchanged (paths with spaces or colons).
    header = (
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    {split}: {json.dumps(str(data_path))}\n"
        f"{split_key}: {split}\n"
    )
    body = _BPB_BODY if kind == "bpb" else _MC_BODY
    return header + body + "metadata:\n  version: 1.0\n"


def write_task_yamls(yaml_dir: Path, data_dir: Path) -> list[Path]:
    """Write the five YAML files into ``yaml_dir``, pointing at JSONL files in ``data_dir``.

    The two differ while building: YAMLs are written in a temporary folder but must name the data
    where it will live after the folder is renamed into place.
    """
    written = []
    for name, (_, _, filename) in TASK_FILES.items():
        path = yaml_dir / f"{name}.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(task_yaml(name, data_dir.absolute() / filename), encoding="utf-8")
        tmp.replace(path)  # atomic per file: a reader never sees half a YAML
        written.append(path)
    return written


def yamls_point_to(yaml_dir: Path, data_dir: Path) -> bool:
    """Whether every task YAML in ``yaml_dir`` reads its data from ``data_dir``."""
    for name, (_, _, filename) in TASK_FILES.items():
        path = yaml_dir / f"{name}.yaml"
        expected = json.dumps(str(data_dir.absolute() / filename))
        if not path.is_file() or expected not in path.read_text(encoding="utf-8"):
            return False
    return True


def write_task_data(
    tasks_dir: Path,
    dev: Sequence[Document],
    test: Sequence[Document],
    ood: Sequence[Document],
    seed: int,
    count_tokens: Callable[[str], int],
    max_length: int,
) -> dict[str, int]:
    """Write the JSONL data of all five tasks into ``tasks_dir``; returns rows per file.

    ``count_tokens`` checks that every choice fits the model's context: lm-eval truncates contexts
    from the left but fails outright on a continuation longer than ``max_length`` tokens.
    """
    tasks_dir.mkdir(parents=True, exist_ok=True)
    # Different seeds per split so that dev and test items are not built the same way.
    mc = {"dev_mc.jsonl": multiple_choice_rows(dev, seed + 1), "test_mc.jsonl": multiple_choice_rows(test, seed + 2)}
    longest = max(count_tokens(" " + choice) for rows in mc.values() for row in rows for choice in row["choices"])
    if longest >= max_length:
        raise ValueError(f"a multiple-choice continuation has {longest} tokens; max_length {max_length} is too short")
    counts = {
        "dev.jsonl": write_jsonl(tasks_dir / "dev.jsonl", document_rows(dev)),
        "test.jsonl": write_jsonl(tasks_dir / "test.jsonl", document_rows(test)),
        **{name: write_jsonl(tasks_dir / name, rows) for name, rows in mc.items()},
        "test_ood.jsonl": write_jsonl(tasks_dir / "test_ood.jsonl", document_rows(ood)),
    }
    logger.info("wrote task data %s", counts)
    return counts
