"""The evaluation side of an action: dev suite + objective, test suite, models bound to lm-eval."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ckptmerge.actions.setup import Sources
from ckptmerge.checkpoints.resident import ResidentModel
from ckptmerge.config import Config
from ckptmerge.errors import CheckpointError
from ckptmerge.evaluation import TaskSuite, build_objective, make_lm

log = logging.getLogger(__name__)


class EvalSession:
    """Dev tasks (the objective) and test tasks (reported), built once per action."""

    def __init__(self, cfg: Config, sources: Sources) -> None:
        self.cfg = cfg
        self.sources = sources
        e = cfg.eval
        self.dev = TaskSuite(sources.dev_tasks, sources.include_paths, e.limit, "eval.tasks")
        self.objective = build_objective(self.dev.info, e.metrics, sources.dev_weights, e.allow_test_split)
        self.test = TaskSuite(sources.test_tasks, sources.include_paths, e.limit, "eval.test_tasks") if sources.test_tasks else None
        self._lm: Any = None
        self._resident: ResidentModel | None = None

    @classmethod
    def with_resident(cls, cfg: Config, sources: Sources) -> tuple["EvalSession", ResidentModel]:
        """Tasks first (bad task names fail before the model is built), then the resident model, bound."""
        session = cls(cfg, sources)
        resident = ResidentModel(sources.cset, device=cfg.runtime.device, dtype=cfg.runtime.dtype)
        session.bind(resident)
        return session, resident

    def _make_lm(self, model: Any, tokenizer: Any, device: str) -> Any:
        return make_lm(model, tokenizer, self.cfg.eval.batch_size, self.sources.max_length, device)

    def bind(self, resident: ResidentModel) -> None:
        """Evaluate the resident model from now on (one lm-eval wrapper for the whole search)."""
        self._resident = resident
        self._lm = self._make_lm(resident.model, resident.tokenizer, resident.device)

    @torch.no_grad()
    def evaluate_dev(self, lm: Any = None) -> dict[str, float]:
        return self.dev.evaluate(lm or self._lm)

    def reload(self, folder: Path) -> tuple[Any, Any, Any]:
        """A fresh model loaded from a written folder: ``(model, tokenizer, lm-eval wrapper)``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert self._resident is not None
        trust = self.sources.cset.trust_remote_code
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=self._resident.dtype, trust_remote_code=trust)
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"the written merge in {folder} does not load: {str(e).splitlines()[0]}") from None
        model.to(self._resident.device).eval()
        return model, tok, self._make_lm(model, tok, self._resident.device)

    @torch.no_grad()
    def test_report(self, best_lm: Any, resident: ResidentModel) -> dict[str, dict[str, float]]:
        """Test metrics of the best merge (``best``) and of each source checkpoint alone."""
        if self.test is None:
            return {}
        report = {"best": self.test.evaluate(best_lm)}
        n = len(resident.cset)
        for i, c in enumerate(resident.cset.checkpoints):
            resident.apply([1.0 if j == i else 0.0 for j in range(n)])
            report[c.name] = self.test.evaluate(self._lm)
        return report
