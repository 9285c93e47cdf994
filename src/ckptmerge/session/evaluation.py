"""The evaluation side of an action: dev suite + objective, test suite, models bound to lm-eval."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ckptmerge.config import EvalConfig, MergeConfig, RuntimeConfig
from ckptmerge.errors import CheckpointError, ConfigError
from ckptmerge.evaluation import TaskSuite, build_objective, make_lm, racing
from ckptmerge.evaluation.doc_scores import DocScores, documents
from ckptmerge.evaluation.racing import ChunkPlan, Incumbent, RaceOutcome
from ckptmerge.evaluation.uncertainty import Bootstrap, Gain, gains_by_metric
from ckptmerge.merge import searchable
from ckptmerge.resident import ResidentModel, SingleResidentModel
from ckptmerge.runtime.distributed import Channel
from ckptmerge.session.setup import Sources

log = logging.getLogger(__name__)


class EvalSession:
    """Dev tasks (the objective) and test tasks (reported), built once per action."""

    def __init__(self, e: EvalConfig, seed: int, sources: Sources) -> None:
        """``e``: the ``eval.*`` settings; ``seed``: one seed for the documents sampled under ``eval.limit``
        and the bootstrap resamples (a search's ``search.seed``)."""
        self.batch_size = e.batch_size
        self.sources = sources
        self.dev = TaskSuite(sources.dev_tasks, sources.include_paths, e.limit, "eval.tasks", sample_seed=seed)
        self.objective = build_objective(self.dev.info, e.metrics, sources.dev_weights, e.allow_test_split)
        self.test = (
            TaskSuite(sources.test_tasks, sources.include_paths, e.limit, "eval.test_tasks", sample_seed=seed)
            if sources.test_tasks
            else None
        )
        self.bootstrap = Bootstrap(e.bootstrap, e.confidence, seed)
        self.race = e.race
        self._seed = seed
        self._plan: ChunkPlan | None = None
        self._lm: Any = None
        self._resident: ResidentModel | None = None
        self._channel: Channel | None = None  # the command flow to the other ranks under runtime=deepspeed
        self._datasets: dict[str, list[Any]] = {}

    @classmethod
    def with_resident(
        cls,
        ev: EvalConfig,
        seed: int,
        runtime: RuntimeConfig,
        merge: MergeConfig,
        sources: Sources,
        channel: Channel | None = None,
    ) -> tuple[EvalSession, ResidentModel]:
        """Tasks first (``eval.*``; bad task names fail before the model is built), then the resident model
        (where ``runtime.*`` puts it, merged with ``merge.method``), bound.

        Under ``runtime=deepspeed`` the model is partitioned over the ranks of ``channel``'s launch;
        rank 0 first tells the others to build theirs (they wait in the worker's ``serve`` loop).
        """
        session = cls(ev, seed, sources)
        if runtime.backend == "deepspeed":
            from ckptmerge.resident.zero import ZeroResidentModel
            from ckptmerge.runtime import distributed

            assert channel is not None, "runtime=deepspeed: main joins the process group and passes its channel"
            channel.send(distributed.START)
            session._channel = channel
            resident: ResidentModel = ZeroResidentModel(
                sources.cset, channel, dtype=runtime.dtype, deepspeed_config_path=runtime.deepspeed_config
            )
        else:
            resident = SingleResidentModel(sources.cset, device=runtime.device, dtype=runtime.dtype)
        if merge.method != "linear":  # trials evaluate the merge that will be written, not a linear one
            if runtime.backend == "deepspeed":
                raise ConfigError(
                    f"merge.method={merge.method} needs whole tensors; under runtime=deepspeed only "
                    "linear merges run on the partitions"
                )
            resident.merge_fn = searchable(merge.method).bind(merge.settings)
        session.bind(resident)
        return session, resident

    @property
    def partitioned(self) -> bool:
        """The resident model is partitioned over DeepSpeed ranks (rank 0 drives the others)."""
        return self._channel is not None

    def _make_lm(self, model: Any, tokenizer: Any, device: str) -> Any:
        rank, world = (self._channel.ranks.rank, self._channel.ranks.world_size) if self._channel else (0, 1)
        return make_lm(model, tokenizer, self.batch_size, self.sources.max_length, device, rank, world)

    def bind(self, resident: ResidentModel) -> None:
        """Evaluate the resident model from now on (one lm-eval wrapper for the whole search)."""
        self._resident = resident
        self._lm = self._make_lm(resident.model, resident.tokenizer, resident.device)

    @torch.no_grad()
    def evaluate_dev(self, lm: Any = None) -> dict[str, float]:
        return self.evaluate_suite("dev", lm)

    @torch.no_grad()
    def evaluate_suite(self, which: str, lm: Any = None) -> dict[str, float]:
        return self.evaluate_with_scores(which, lm)[0]

    @torch.no_grad()
    def evaluate_with_scores(self, which: str, lm: Any = None) -> tuple[dict[str, float], DocScores]:
        """``dev`` or ``test`` metrics of ``lm`` (default: the resident model) and their per-document
        scores; every rank takes part when the model is partitioned, and only rank 0 gets the result."""
        suite = self.dev if which == "dev" else self.test
        assert suite is not None, f"no {which} tasks"
        if self._channel is not None:
            from ckptmerge.runtime import distributed

            self._channel.send(distributed.EVAL, which)
        return suite.evaluate_with_scores(lm or self._lm)

    def chunk_plan(self) -> ChunkPlan:
        """The dev documents' racing chunks (``eval.race.chunks``), seeded by the search's seed: built once,
        the same for every trial."""
        if self._plan is None:
            self._plan = racing.plan_chunks(self.dev.doc_ids(), self.race.chunks, self._seed)
        return self._plan

    @torch.no_grad()
    def evaluate_chunk(self, chunk: racing.Chunk) -> tuple[dict[str, float], DocScores, int | None]:
        """The resident model's dev metrics and per-document scores on one chunk, and the tokens read."""
        metrics, scores = self.dev.evaluate_with_scores(self._lm, {t: list(v) for t, v in chunk.items()})
        return metrics, scores, self.dev.last_tokens

    def evaluate_trial(self, incumbent: Incumbent | None) -> RaceOutcome:
        """The resident model's dev evaluation for a trial: raced against ``incumbent`` chunk by chunk
        when ``eval.race.enabled`` (evaluation/racing.py), else (no incumbent yet, a partitioned model, an
        objective without per-document scores) every document in one call."""
        if (
            self.race.enabled
            and incumbent is not None
            and not self.partitioned  # the other ranks' serve loop evaluates whole suites only
            and racing.covers(self.objective, incumbent.scores)
        ):
            return racing.race(
                self.evaluate_chunk,
                self.chunk_plan(),
                incumbent,
                self.bootstrap,
                self.objective,
                float(self.race.confidence),
            )
        metrics, scores = self.evaluate_with_scores("dev")
        return RaceOutcome(metrics, scores, False, None, None, 1, documents(scores), self.dev.last_tokens)

    def datasets(self, which: str) -> list[Any]:
        """The ``dev`` or ``test`` tasks as MLflow datasets (the documents scored), built once."""
        from ckptmerge.tracking.datasets import suite_datasets

        if which not in self._datasets:
            suite = self.dev if which == "dev" else self.test
            self._datasets[which] = [] if suite is None else suite_datasets(suite.task_objects(), suite.samples)
        return self._datasets[which]

    def objective_se(self, scores: DocScores) -> float:
        """The bootstrap standard error of the objective from one evaluation's per-document scores."""
        return self.bootstrap.standard_error(self.objective, scores)

    def reload(self, folder: Path) -> tuple[Any, Any, Any]:
        """A fresh model loaded from a written folder: ``(model, tokenizer, lm-eval wrapper)``.

        A partitioned resident model loads the folder into its partitions instead (every rank its own
        part); the model is then None: no rank holds it whole.
        """
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        assert self._resident is not None
        trust = self.sources.cset.trust_remote_code
        if self.partitioned:
            from ckptmerge.resident.zero import ZeroResidentModel

            assert isinstance(self._resident, ZeroResidentModel)
            try:
                AutoConfig.from_pretrained(folder, trust_remote_code=trust)
                tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
            except (OSError, ValueError) as e:
                raise CheckpointError(
                    f"the written merge in {folder} does not load: {str(e).splitlines()[0]}"
                ) from None
            self._resident.load_folder(folder)
            return None, tok, self._lm
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=self._resident.dtype, trust_remote_code=trust)
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"the written merge in {folder} does not load: {str(e).splitlines()[0]}") from None
        model.to(self._resident.device).eval()  # type: ignore[arg-type]  # transformers' wrapped .to() stub
        return model, tok, self._make_lm(model, tok, self._resident.device)

    @torch.no_grad()
    def test_report(
        self, best_lm: Any, resident: ResidentModel
    ) -> tuple[dict[str, dict[str, float]], dict[str, DocScores]]:
        """Test metrics of the best merge (``best``) and of each source checkpoint alone, and the
        per-document scores of each (for paired gains)."""
        if self.test is None:
            return {}, {}
        report, scores = {}, {}
        report["best"], scores["best"] = self.evaluate_with_scores("test", best_lm)
        n = len(resident.cset)
        for i, c in enumerate(resident.cset.checkpoints):
            resident.apply([1.0 if j == i else 0.0 for j in range(n)])
            report[c.name], scores[c.name] = self.evaluate_with_scores("test")
        return report, scores

    def test_gains(self, scores: dict[str, DocScores], baseline: str) -> dict[str, Gain]:
        """Paired gains of the best merge over ``baseline`` on every test metric (positive: the merge is better)."""
        if self.test is None or "best" not in scores or baseline not in scores:
            return {}
        hib = {f"{t}/{m}": bool(v) for t, info in self.test.info.items() for m, v in info.higher_is_better.items()}
        return gains_by_metric(self.bootstrap, hib, scores["best"], scores[baseline])
