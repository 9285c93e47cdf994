"""The trajectory's text: docstrings of the Python standard library, split by document.

Every Python install carries its standard library as source, so this corpus needs no download and
is the same on every machine with the same Python version. Files are parsed with :mod:`ast`, never
imported: importing would run code, pull in optional C extensions and be slow.

The out-of-domain text (code snippets of :func:`scan_stdlib`) is Python *code* from the same files with
all docstrings removed and comments dropped (``ast.unparse`` does not keep comments), so it is a
different kind of text from the English docstrings the model is trained on.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import random
import sysconfig
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Packages of the standard library that are left out: tests (huge, repetitive, often stripped by
#: distributions), GUI/IDE code and the deprecated 2to3 grammar; ``site-packages`` is not stdlib.
SKIPPED_PARTS: frozenset[str] = frozenset(
    {
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "lib2to3",
        "turtledemo",
        "site-packages",
        "dist-packages",
        "ensurepip",
        "__pycache__",
    }
)

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class Document:
    """One docstring (or code snippet) and where it came from."""

    text: str
    source: str  # module path relative to the stdlib root, e.g. "email/message.py"
    line: int  # 0 for a module docstring


@dataclass(frozen=True)
class CorpusSplits:
    """Disjoint document sets; dev and test feed the evaluation tasks, calib the Fisher/RegMean baselines."""

    train: tuple[Document, ...]
    calib: tuple[Document, ...]
    dev: tuple[Document, ...]
    test: tuple[Document, ...]


def stdlib_root() -> Path:
    """The directory holding the pure-Python standard library of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path | None = None) -> list[Path]:
    """All ``.py`` files of the standard library outside :data:`SKIPPED_PARTS`, sorted by relative path."""
    root = root or stdlib_root()
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so that os.walk never descends into site-packages (can be huge) or tests.
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_PARTS]
        files.extend(Path(dirpath) / name for name in filenames if name.endswith(".py"))
    # Sorting on the relative POSIX path keeps the order independent of the file system's.
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _parse(path: Path) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            # Old modules contain invalid escape sequences; the warnings would only be noise here.
            warnings.simplefilter("ignore")
            return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as error:
        logger.debug("skipping %s: %s", path, error)
        return None


@functools.lru_cache(maxsize=4)
def scan_stdlib(
    min_doc_chars: int = 200, code_chars: tuple[int, int] = (300, 2000), root: Path | None = None
) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """One pass over the stdlib: ``(docstrings, code snippets)``, both ordered by module path then line.

    Docstrings have at least ``min_doc_chars`` characters and are deduplicated (the same docstring in
    two modules, e.g. ``decimal`` and ``_pydecimal``, is kept once) so no text can land in two splits.
    Code snippets are top-level functions/classes without docstrings or comments whose text length
    lies in ``code_chars``. Parsing dominates the cost (seconds), hence one pass, cached per process
    (the results are immutable).
    """
    root = root or stdlib_root()
    docstrings: list[Document] = []
    code: list[Document] = []
    seen: set[str] = set()
    low, high = code_chars
    for path in stdlib_sources(root):
        tree = _parse(path)
        if tree is None:
            continue
        relative = path.relative_to(root).as_posix()
        found = []
        for node in ast.walk(tree):
            if isinstance(node, _DOC_NODES):
                text = ast.get_docstring(node, clean=True)
                if text and len(text.strip()) >= min_doc_chars:
                    found.append((getattr(node, "lineno", 0), text.strip()))
        for line, text in sorted(found):  # ast.walk is breadth-first; sort by line for a stable order
            if text not in seen:
                seen.add(text)
                docstrings.append(Document(text=text, source=relative, line=line))
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            # Cheap line-count filter first: ast.unparse is the slow part and long bodies are never kept.
            if (node.end_lineno or node.lineno) - node.lineno > high // 25:
                continue
            snippet = ast.unparse(_DocstringRemover().visit(node)).strip()
            if low <= len(snippet) <= high:
                code.append(Document(text=snippet, source=relative, line=node.lineno))
    logger.info("scanned %s: %d docstrings, %d code snippets", root, len(docstrings), len(code))
    return tuple(docstrings), tuple(code)


def split_documents(documents: Sequence[Document], n_dev: int, n_test: int, n_calib: int, seed: int) -> CorpusSplits:
    """Shuffle whole documents with ``seed`` and cut them into dev, test, calib and the rest for training."""
    needed = n_dev + n_test + n_calib
    if needed >= len(documents):
        raise ValueError(f"corpus has {len(documents)} documents; dev+test+calib ask for {needed}")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    shuffled = [documents[i] for i in order]
    dev = tuple(shuffled[:n_dev])
    test = tuple(shuffled[n_dev : n_dev + n_test])
    calib = tuple(shuffled[n_dev + n_test : needed])
    train = tuple(shuffled[needed:])
    return CorpusSplits(train=train, calib=calib, dev=dev, test=test)


class _DocstringRemover(ast.NodeTransformer):
    """Drops the docstring statement of modules, classes and functions (keeps bodies valid)."""

    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node

    visit_Module = _strip
    visit_ClassDef = _strip
    visit_FunctionDef = _strip
    visit_AsyncFunctionDef = _strip


def sample_documents(pool: Sequence[Document], n_docs: int, seed: int) -> list[Document]:
    """A seeded sample of ``n_docs`` documents from ``pool``, kept in pool order."""
    if len(pool) < n_docs:
        raise ValueError(f"only {len(pool)} documents available, {n_docs} requested")
    chosen = sorted(random.Random(seed).sample(range(len(pool)), n_docs))
    return [pool[i] for i in chosen]
