"""Build (or reuse) the embedded trajectory: corpus, tokenizer, pretraining with checkpoints, tasks.

A trajectory lives in ``<cache_dir>/<spec fingerprint>/``::

    trajectory.json          metadata, written last: its presence marks a complete build
    train.jsonl calib.jsonl  training documents; calibration documents (train distribution)
    checkpoints/stepNNNNN/   transformers folders, oldest to newest
    tasks/                   lm-eval YAML tasks and their JSONL data (an ``include_path``)

Builds happen in a temporary folder beside the target and are renamed into place, so a reader sees
either nothing or a complete trajectory; a file lock keeps two processes from training the same spec.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import transformers

from ..errors import ConfigError
from . import corpus, tasks, tokenizer, train

logger = logging.getLogger(__name__)

#: Bump when the build's output changes for the same spec, so old caches are not reused.
FORMAT_VERSION = 2  # bump when the build's output changes, so caches rebuild
METADATA_FILE = "trajectory.json"


@dataclass(frozen=True)
class TrajectorySpec:
    """Everything that determines a trajectory; equal specs give identical builds on one machine."""

    seed: int = 0
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 300
    save_every: int = 50
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    n_dev_docs: int = 200
    n_test_docs: int = 200
    n_calib_docs: int = 100
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in ("seed", "warmup_steps") and value < 0:
                raise ConfigError(f"trajectory.{field.name} must be >= 0, got {value}")
            if field.name not in ("seed", "warmup_steps", "torch_threads") and not value > 0:
                raise ConfigError(f"trajectory.{field.name} must be > 0, got {value}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"trajectory.torch_threads must be >= 1 or null, got {self.torch_threads}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"trajectory.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.vocab_size < 300:  # 256 byte tokens + specials + some merges
            raise ConfigError(f"trajectory.vocab_size must be >= 300 for byte-level BPE, got {self.vocab_size}")
        if self.save_every > self.steps:
            raise ConfigError(f"trajectory.save_every ({self.save_every}) exceeds steps ({self.steps})")
        if self.n_dev_docs < tasks.N_CHOICES or self.n_test_docs < tasks.N_CHOICES:
            raise ConfigError(f"trajectory.n_dev_docs and n_test_docs must be >= {tasks.N_CHOICES}")

    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of the sorted JSON of all fields (and the build format)."""
        payload = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def default(cls) -> TrajectorySpec:
        """~1.8M parameters, 300 steps, 6 checkpoints; builds in about a minute on 2 CPU cores."""
        return cls()

    @classmethod
    def tiny(cls) -> TrajectorySpec:
        """A few seconds to build; for tests. Checkpoints still show real learning."""
        return cls(
            vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, seq_len=128, batch_size=8,
            steps=90, save_every=30, learning_rate=5e-3, warmup_steps=5,
            n_dev_docs=40, n_test_docs=40, n_calib_docs=20,
        )  # fmt: skip


@dataclass(frozen=True)
class Trajectory:
    """A built trajectory: ordered checkpoints, the lm-eval tasks and the calibration text."""

    root: Path
    checkpoints: tuple[Path, ...]  # oldest -> newest
    tasks_dir: Path  # lm-eval include_path
    calib_path: Path  # JSONL with a "text" field
    max_length: int  # HFLM(max_length=...) must use this: rolling windows and context truncation
    dev_tasks: tuple[str, ...] = tasks.DEV_TASKS
    test_tasks: tuple[str, ...] = tasks.TEST_TASKS

    @property
    def metadata(self) -> dict:
        """The contents of ``trajectory.json``."""
        return json.loads((self.root / METADATA_FILE).read_text(encoding="utf-8"))


def default_cache_dir() -> Path:
    """``$CKPTMERGE_CACHE`` if set, else ``~/.cache/ckptmerge/trajectories``."""
    env = os.environ.get("CKPTMERGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ckptmerge" / "trajectories"


def build_trajectory(spec: TrajectorySpec, cache_dir: Path, progress: bool = True) -> Trajectory:
    """Build (or reuse from ``cache_dir/<fingerprint>``) the trajectory described by ``spec``."""
    cache_dir = Path(cache_dir).expanduser().absolute()
    target = cache_dir / spec.fingerprint()
    if (target / METADATA_FILE).is_file():
        return _load(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_dir / f".{target.name}.lock"):
        if (target / METADATA_FILE).is_file():  # another process built it while we waited
            return _load(target)
        for stale in cache_dir.glob(f".{target.name}.tmp-*"):  # killed builds; we hold the lock
            logger.warning("removing leftover partial build %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # no metadata: an incomplete folder someone left; never trust it
            shutil.rmtree(target)
        staging = cache_dir / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _build_into(spec, staging, target, progress)
            try:
                staging.rename(target)
            except OSError:  # target appeared (a builder without our lock): keep theirs
                if not (target / METADATA_FILE).is_file():
                    raise
                logger.info("%s was built concurrently; using it", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _load(target)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock; the OS drops it if the holder dies, so it never goes stale."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _build_into(spec: TrajectorySpec, staging: Path, final_root: Path, progress: bool) -> None:
    """Write a complete trajectory into ``staging`` whose paths already name ``final_root``."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    staging.mkdir(parents=True)
    logger.info("building trajectory %s in %s", final_root.name, staging)

    docstrings, code = corpus.scan_stdlib()
    splits = corpus.split_documents(docstrings, spec.n_dev_docs, spec.n_test_docs, spec.n_calib_docs, spec.seed)
    ood = corpus.sample_documents(code, spec.n_test_docs, spec.seed)
    tasks.write_jsonl(staging / "train.jsonl", tasks.document_rows(splits.train))
    tasks.write_jsonl(staging / "calib.jsonl", tasks.document_rows(splits.calib))
    timings["corpus_s"] = time.perf_counter() - started

    mark = time.perf_counter()
    train_texts = [d.text for d in splits.train]
    tok = tokenizer.train_tokenizer(train_texts, spec.vocab_size)
    stream = tokenizer.encode_documents(tok, train_texts)
    timings["tokenizer_s"] = time.perf_counter() - mark

    # Tasks before training: a continuation too long for seq_len fails here, not after training.
    mark = time.perf_counter()
    counts = tasks.write_task_data(
        staging / "tasks", splits.dev, splits.test, ood, spec.seed,
        count_tokens=lambda text: len(tok(text, add_special_tokens=False)["input_ids"]),
        max_length=spec.seq_len,
    )  # fmt: skip
    tasks.write_task_yamls(staging / "tasks", final_root / "tasks")
    timings["tasks_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    shape = train.ModelShape(spec.vocab_size, spec.hidden_size, spec.num_layers, spec.num_heads, spec.seq_len)
    settings = train.TrainSettings(
        seed=spec.seed, batch_size=spec.batch_size, steps=spec.steps, save_every=spec.save_every,
        learning_rate=spec.learning_rate, warmup_steps=spec.warmup_steps,
    )  # fmt: skip
    # fork_rng: training seeds torch's global generator; the caller's random state is left as it was.
    with _torch_threads(spec.torch_threads), torch.random.fork_rng(devices=[]):
        saved = train.pretrain(shape, settings, tok, stream, staging / "checkpoints", progress=progress)
    timings["train_s"] = time.perf_counter() - mark

    timings["total_s"] = time.perf_counter() - started

    metadata = {
        "format": FORMAT_VERSION,
        "fingerprint": spec.fingerprint(),
        "spec": asdict(spec),
        "root": str(final_root),
        "max_length": spec.seq_len,
        "max_length_note": "pass HFLM(max_length=max_length): the model was trained on and "
        "configured for this many positions; lm-eval's rolling windows use it",
        "checkpoints": [
            {"name": c.name, "step": c.step, "train_loss": c.loss, "mean_train_loss": c.mean_loss} for c in saved
        ],
        "dev_tasks": list(tasks.DEV_TASKS),
        "test_tasks": list(tasks.TEST_TASKS),
        "ood_text": "Python code of stdlib top-level functions/classes, docstrings and comments removed",
        "corpus": {
            "source": "docstrings (>= 200 chars) of the Python standard library, parsed with ast",
            "documents": {
                "train": len(splits.train),
                "calib": len(splits.calib),
                "dev": len(splits.dev),
                "test": len(splits.test),
                "test_ood": len(ood),
            },
            "train_chars": sum(len(t) for t in train_texts),
            "train_tokens": len(stream),
            "task_rows": counts,
        },  # fmt: skip
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    # Written last: a folder with this file is complete.
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "built trajectory %s in %.1fs (training %.1fs)", final_root.name, timings["total_s"], timings["train_s"]
    )


def _load(root: Path) -> Trajectory:
    """The :class:`Trajectory` of a complete folder; re-points the task YAMLs if the folder moved."""
    metadata = json.loads((root / METADATA_FILE).read_text(encoding="utf-8"))
    checkpoints = tuple(root / "checkpoints" / c["name"] for c in metadata["checkpoints"])
    missing = [str(p) for p in checkpoints if not (p / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"trajectory {root} lacks checkpoints {missing}; delete the folder to rebuild")
    tasks_dir = root / "tasks"
    if not tasks.yamls_point_to(tasks_dir, tasks_dir):
        logger.info("trajectory %s was moved; rewriting its task YAMLs", root)
        tasks.write_task_yamls(tasks_dir, tasks_dir)
    return Trajectory(
        root=root,
        checkpoints=checkpoints,
        tasks_dir=tasks_dir,
        calib_path=root / "calib.jsonl",
        max_length=int(metadata["max_length"]),
        dev_tasks=tuple(metadata["dev_tasks"]),
        test_tasks=tuple(metadata["test_tasks"]),
    )
