"""Thin adapter over lm-evaluation-harness: a live model in, flat ``TASK/METRIC`` floats out.

Tasks are indexed and built once (datasets loaded once); each call runs ``lm_eval.evaluator.evaluate``
on the model as it is in memory, so a trial never writes the model to disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ckptmerge.config import did_you_mean
from ckptmerge.errors import ConfigError, EvaluationError
from ckptmerge.evaluation.doc_scores import DocScores, from_samples

log = logging.getLogger(__name__)

_MIN_LM_EVAL = (0, 4, 8)


def _check_version() -> None:
    version = metadata.version("lm_eval")
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    if parts < _MIN_LM_EVAL:
        raise EvaluationError(f"lm-eval {version} is too old; ckptmerge needs >= {'.'.join(map(str, _MIN_LM_EVAL))}")


def metric_name(task: str, key: str) -> str | None:
    """``('wikitext', 'bits_per_byte,none')`` → ``'wikitext/bits_per_byte'``; stderr and aliases → None.

    MLflow metric names may not contain commas; a filter other than ``none`` is kept after a dot.
    """
    if "," not in key or "_stderr" in key:
        return None
    metric, _, flt = key.partition(",")
    return f"{task}/{metric}" if flt in ("none", "") else f"{task}/{metric}.{flt}"


@dataclass(frozen=True)
class TaskInfo:
    """What the objective needs to know about one task."""

    name: str
    metrics: tuple[str, ...]  # metric names the task reports, e.g. ("acc", "acc_norm")
    higher_is_better: dict[str, bool]  # per metric, from the task's own config
    split: str  # the split the task evaluates: "test", "validation", ...


def _quiet_lm_eval() -> None:
    # lm-eval logs every request batch at INFO; a search runs hundreds of them. Its HF wrapper also
    # warns on every call that it was handed a live model (which is the point) and on each context it
    # left-truncates to max_length (expected for long documents).
    for name in ("lm_eval", "lm-eval", "lm_eval.evaluator", "lm_eval.api.task"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)


class TaskSuite:
    """A set of lm-eval tasks, indexed and built once, evaluated many times on live models."""

    def __init__(
        self,
        tasks: Sequence[str],
        include_paths: Sequence[str | Path] = (),
        limit: int | None = None,
        config_key: str = "eval.tasks",
        sample_seed: int = 0,
    ) -> None:
        _check_version()
        _quiet_lm_eval()
        self.names = list(tasks)
        self.limit = limit
        self.config_key = config_key
        for p in include_paths:
            if not Path(p).exists():
                raise ConfigError(f"eval.include_path does not exist: {p}")
        manager = self._manager([str(p) for p in include_paths])
        try:
            self._task_dict = manager.load(self.names)
        except Exception as e:  # lm-eval raises KeyError/ValueError/dataset errors; keep the first line
            raise EvaluationError(
                f"{config_key}: cannot load tasks {self.names}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        self.info = {name: self._info(name) for name in self.names}
        self.samples = self._sample(limit, sample_seed)
        self.last_tokens: int | None = None  # tokens the model read in the last evaluation (None: not counted)

    def _sample(self, limit: int | None, seed: int) -> dict[str, list[int]] | None:
        """``limit`` documents of each task, drawn at random with ``seed``: the same for every model of a
        run. (lm-eval's own ``limit`` takes the first N, which for a sorted or grouped file is no sample.)"""
        if limit is None:
            return None
        import zlib

        import numpy as np

        picked: dict[str, list[int]] = {}
        for name, task in self._task_dict["tasks"].items():
            n = len(task.eval_docs)
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            picked[name] = sorted(int(i) for i in rng.choice(n, size=min(limit, n), replace=False))
        return picked

    def _manager(self, include_paths: list[str]) -> Any:
        from lm_eval.tasks import TaskManager

        # Indexing lm-eval's own ~15k task configs takes seconds; skip it when our paths hold every task.
        if include_paths:
            local = TaskManager(include_path=include_paths, include_defaults=False)
            if all(t in local.all_tasks for t in self.names):
                return local
        manager = TaskManager(include_path=include_paths or None)
        for t in self.names:
            if t not in manager.all_tasks:
                raise EvaluationError(
                    f"{self.config_key}: unknown lm-eval task '{t}'{did_you_mean(t, manager.all_tasks)}"
                )
        return manager

    def _info(self, name: str) -> TaskInfo:
        tasks = self._task_dict["tasks"]
        if name in tasks:
            task = tasks[name]
            hib: dict[str, bool] = dict(task.higher_is_better())
            metrics = tuple(m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str))
            metrics = metrics or tuple(hib)
            split = "test" if task.has_test_docs() else ("validation" if task.has_validation_docs() else "train")
            return TaskInfo(name=name, metrics=metrics, higher_is_better=hib, split=split)
        # A group or tag: the objective uses its aggregate; splits are those of its children.
        children = [t for t in tasks.values()]
        hib = {}
        for t in children:
            hib.update(t.higher_is_better())
        split = "test" if any(t.has_test_docs() for t in children) else "validation"
        return TaskInfo(name=name, metrics=tuple(hib), higher_is_better=hib, split=split)

    def task_objects(self) -> dict[str, Any]:
        return dict(self._task_dict["tasks"])

    def evaluate(self, lm: Any) -> dict[str, float]:
        """Run every task on ``lm`` (an lm-eval ``LM``); flat ``{TASK/METRIC: value}``."""
        return self.evaluate_with_scores(lm)[0]

    def doc_ids(self) -> dict[str, list[int]]:
        """Per task, the documents a full evaluation scores: lm-eval's doc ids (indices into the task's
        ``eval_docs``), which are also the ids of the per-document scores, whether or not a ``samples``
        list chose them (lm-eval 0.4.13)."""
        if self.samples is not None:
            return {t: list(v) for t, v in self.samples.items()}
        return {name: list(range(len(task.eval_docs))) for name, task in self._task_dict["tasks"].items()}

    def evaluate_with_scores(
        self, lm: Any, chunk: dict[str, list[int]] | None = None
    ) -> tuple[dict[str, float], DocScores]:
        """Flat ``{TASK/METRIC: value}`` and, for each metric, its score on every document.

        ``chunk``: score only these doc ids of each task (racing; every task must have some: lm-eval
        scores every document of a task it is given no list for)."""
        from lm_eval.evaluator import evaluate

        samples = self.samples
        if chunk is not None:
            samples = {t: sorted(chunk[t]) for t in self._task_dict["tasks"]}
        try:
            results = evaluate(lm=lm, task_dict=self._task_dict, samples=samples, bootstrap_iters=0, log_samples=True)
        except Exception as e:
            raise EvaluationError(f"evaluation of {self.names} failed: {describe_exception(e)}") from e
        scores = from_samples((results or {}).get("samples", {}), self._task_dict["tasks"], metric_name)
        take = getattr(lm, "take_tokens_read", None)  # the counting wrapper of make_lm; every rank calls it
        self.last_tokens = int(take()) if take is not None else None
        return self._flat(results), scores

    @staticmethod
    def _flat(results: Any) -> dict[str, float]:
        flat: dict[str, float] = {}
        for task, metrics in (results or {}).get("results", {}).items():
            for key, value in metrics.items():
                name = metric_name(task, key)
                if name is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                flat[name] = float(value)
        return flat


def make_lm(
    model: Any, tokenizer: Any, batch_size: int, max_length: int | None, device: str, rank: int = 0, world_size: int = 1
) -> Any:
    """An lm-eval ``HFLM`` wrapping the live model object (no copy, no disk round trip).

    With ``world_size > 1`` (a partitioned model under DeepSpeed) each rank evaluates its share of
    every task's documents and lm-eval gathers the per-document metrics on rank 0.
    """
    from lm_eval.models.huggingface import HFLM

    from ckptmerge.progress import interactive

    if not interactive():
        HFLM = _without_bars(HFLM)  # noqa: N806
    HFLM = _counting_tokens(HFLM)  # noqa: N806
    if world_size == 1:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
    return _data_parallel_lm(HFLM)(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        rank=rank,
        world_size=world_size,
    )


def _without_bars(base: type) -> type:
    """HFLM that never draws its per-request bars (a log would keep every redraw as a line).

    lm-eval passes ``disable_tqdm=False`` explicitly on some paths (rolling log-likelihoods), so the
    environment's TQDM_DISABLE does not reach those bars; each request entry point is told instead.
    """

    class QuietHFLM(base):
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().generate_until(requests, disable_tqdm=True)

        def _loglikelihood_tokens(
            self, requests: Any, disable_tqdm: bool = False, override_bs: int | None = None
        ) -> Any:
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

    return QuietHFLM


def _counting_tokens(base: type) -> type:
    """HFLM that counts the tokens it reads, for the bill of an evaluation (``tokens_evaluated``).

    Every log-likelihood request (rolling windows included) reaches ``_loglikelihood_tokens`` as
    ``(context tokens, continuation tokens)``; the model reads both, less the last, truncated on the
    left to ``max_length`` as HFLM truncates them. Generation requests are not counted.
    """

    class CountingHFLM(base):
        _tokens_read = 0

        def _loglikelihood_tokens(
            self, requests: Any, disable_tqdm: bool = False, override_bs: int | None = None
        ) -> Any:
            limit = int(self.max_length)
            self._tokens_read += sum(min(len(ctx) + len(cont) - 1, limit) for _, ctx, cont in requests)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        def take_tokens_read(self) -> int:
            """The tokens read since the last call (and start counting again)."""
            n, self._tokens_read = self._tokens_read, 0
            return n

    return CountingHFLM


def _data_parallel_lm(base: type) -> type:
    """HFLM whose rank, world size and collectives are torch.distributed's (DeepSpeed's process group).

    lm-eval pads every rank to the same number of requests; the one-token logits cache is off, since
    it merges requests by content and so would give ranks different numbers of forward passes, which
    partitioned parameters (gathered by every rank together) cannot allow.
    """
    import torch
    import torch.distributed as dist

    class DataParallelHFLM(base):
        def __init__(self, *, rank: int, world_size: int, **kwargs: Any) -> None:
            super().__init__(logits_cache=False, **kwargs)
            self._rank, self._world_size = rank, world_size

        def all_gather(self, tensor: Any) -> Any:
            parts = [torch.empty_like(tensor) for _ in range(self._world_size)]
            dist.all_gather(parts, tensor.contiguous())
            return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

        def gather_object(self, obj: Any, dst: int = 0) -> Any:
            out = [None] * self._world_size if self._rank == dst else None
            dist.gather_object(obj, out, dst=dst)
            return out

        def barrier(self) -> None:
            dist.barrier()

        def take_tokens_read(self) -> int:
            """Every rank's tokens, summed (every rank evaluates, so every rank calls this)."""
            count = torch.tensor(float(super().take_tokens_read()), device=self.device)
            dist.all_reduce(count)
            return int(count.item())

        # Each rank is handed its share of a task's requests; saying how many shows the split in the log
        # (rank 0's), whether or not progress bars are drawn.
        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            log.info("rank %d of %d: %d loglikelihood requests", self._rank, self._world_size, len(requests))
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            log.info("rank %d of %d: %d rolling loglikelihood requests", self._rank, self._world_size, len(requests))
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    return DataParallelHFLM


def describe_exception(e: BaseException) -> str:
    """``Type: first line`` plus where it was raised, so a bare ``AssertionError`` still says something."""
    import traceback

    text = str(e).splitlines()[0] if str(e) else ""
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        f = frames[-1]
        where = (
            f" at {Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} ({(f.line or '').strip()[:120]})"
        )
    return f"{type(e).__name__}{': ' + text if text else ''}{where}"
