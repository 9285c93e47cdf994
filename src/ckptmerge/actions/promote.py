"""``action=promote``: move the registry's ``champion`` alias to the ``candidate`` when it earns it.

Both versions are loaded from the registry (the MLflow model artifact is downloaded and loaded with
transformers) and evaluated afresh on the same test documents: those of the candidate's source run (the
search's parent run logged its resolved config) unless ``eval.test_tasks`` names others, sampled under
``eval.limit`` with ``search.seed``. The score is the objective over those tasks (each task's first
metric unless ``eval.metrics`` says otherwise, weight 1 unless ``eval.weights`` does; minimised metrics
enter with a minus sign, so higher is better).

A difference of two point scores may be sampling noise, so the gain ``score(candidate) - score(champion)``
is measured with a paired bootstrap over the documents (:mod:`ckptmerge.evaluation.uncertainty`), and
so is each scored test metric on its own. The candidate becomes champion only when

* the gain's lower bound at ``eval.confidence`` is above ``registry.promote_margin`` (a gain within
  noise, or one that may be smaller than the margin, keeps the champion), and
* no scored test metric is significantly worse (its interval entirely below 0), unless
  ``registry.allow_task_regression=true`` accepts a trade-off between tasks that the weights favour;

or when there is no champion yet. The decision, its reason, both scores, the gain with its interval and
any regressing metric are tagged on the candidate version and logged in a promotion run (the run
``mlflow run`` opened, when launched by it).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptmerge.config import Config, check_registry_name, config_from_dict
from ckptmerge.errors import CheckpointError, CkptMergeError, ConfigError, EvaluationError, TrackingError
from ckptmerge.evaluation.doc_scores import DocScores
from ckptmerge.evaluation.uncertainty import Bootstrap, Gain
from ckptmerge.session.setup import PACKAGE_TASKS
from ckptmerge.tracking import names
from ckptmerge.tracking.mlflow_run import SearchTracker
from ckptmerge.tracking.secrets import redact_data

log = logging.getLogger(__name__)

TAG_PREFIX = "promotion."
FIRST, PROMOTED, KEPT, UNCHANGED = "first", "promoted", "kept", "already-champion"


@dataclass
class Contender:
    """One registered version under evaluation."""

    alias: str
    version: str
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    scores: DocScores | None = field(default=None, repr=False)  # per-document, for the paired gains


@dataclass(frozen=True)
class PromotionDecision:
    """What the comparison allows, and the one line that says why."""

    decision: str
    reason: str
    gain: Gain | None = None  # the score's gain, candidate - champion
    task_gains: dict[str, Gain] = field(default_factory=dict)  # each scored test metric's gain
    regressions: tuple[str, ...] = ()  # metrics significantly worse (ci_high < 0)


@dataclass(frozen=True)
class PromotionTasks:
    """What the candidate was reported on: task names, where lm-eval finds them, how it runs them."""

    names: tuple[str, ...]
    include_paths: tuple[str, ...]
    limit: int | None
    max_length: int | None
    trust_remote_code: bool = False


# -- the registry side ---------------------------------------------------------------------------
def _version_by_alias(client: Any, name: str, alias: str, required: bool) -> Contender | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if not required:
            return None
        raise TrackingError(
            f"registry.name={name} has no version with alias '{alias}' "
            f"({str(e).splitlines()[0][:200]}); run a search that registers one first"
        ) from None
    return Contender(alias=alias, version=str(mv.version), run_id=mv.run_id)


def _check_registered(client: Any, name: str, uri: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise TrackingError(f"registry.name={name}: no such registered model in {uri}") from None


def _source_config(tracking_uri: str, run_id: str | None) -> tuple[Config | None, dict[str, Any]]:
    """The resolved config and ``result.json`` the version's search run logged (either may be missing)."""
    import mlflow
    import yaml

    if not run_id:
        return None, {}
    texts: dict[str, str] = {}
    for artifact in (names.ARTIFACT_CONFIG, names.ARTIFACT_RESULT):
        try:
            with tempfile.TemporaryDirectory(prefix="ckptmerge-promote-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=artifact, dst_path=tmp, tracking_uri=tracking_uri
                )
                texts[artifact] = Path(local).read_text(encoding="utf-8")
        except Exception as e:  # an artifact that was never logged (e.g. a hand-registered version)
            log.info(
                "run %s has no %s (%s)", run_id, artifact, str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            )
    result = json.loads(texts[names.ARTIFACT_RESULT]) if names.ARTIFACT_RESULT in texts else {}
    if names.ARTIFACT_CONFIG not in texts:
        return None, result
    raw = yaml.safe_load(texts[names.ARTIFACT_CONFIG]) or {}
    try:
        return config_from_dict(raw), result
    except CkptMergeError as e:
        raise ConfigError(
            f"the config logged by run {run_id} no longer validates ({e}); "
            "name the tasks with eval.test_tasks and eval.include_path"
        ) from None


def promotion_tasks(cfg: Config, source: Config | None, result: dict[str, Any]) -> PromotionTasks:
    """``eval.test_tasks`` if given, else the test tasks of the candidate's search, with their task folders."""
    include: list[str] = []
    if cfg.eval.include_path:
        path = Path(cfg.eval.include_path).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"eval.include_path does not exist: {cfg.eval.include_path}")
        include.append(str(path))
    traj_tasks: tuple[str, ...] = ()
    traj_max_length = None
    if source is not None:
        if source.eval.include_path and Path(source.eval.include_path).expanduser().exists():
            include.append(str(Path(source.eval.include_path).expanduser().resolve()))
        if source.model.source == "embedded":  # its tasks live in the trajectory's cache (rebuilt if absent)
            traj = _trajectory(source)
            include.insert(0, str(traj.tasks_dir))
            traj_tasks, traj_max_length = tuple(traj.test_tasks), traj.max_length
    include.append(str(PACKAGE_TASKS))
    tasks: tuple[str, ...] = tuple(cfg.eval.test_tasks)
    if not tasks and source is not None:
        tasks = source.eval.test_tasks or (() if source.eval.tasks else (source.model.test_tasks or traj_tasks))
    if not tasks:  # what the search reported, as a last resort
        tasks = tuple(dict.fromkeys(k.split("/")[0] for k in (result.get("test_metrics") or {})))
    if not tasks:
        raise ConfigError(
            "action=promote found no test tasks for the candidate (its run logged none); name them with eval.test_tasks"
        )
    limit = cfg.eval.limit if cfg.eval.limit is not None else (source.eval.limit if source else None)
    max_length = cfg.eval.max_length or (source.eval.max_length if source else None) or traj_max_length
    trust = bool(source and source.model.trust_remote_code)
    return PromotionTasks(
        names=tasks,
        include_paths=tuple(dict.fromkeys(include)),
        limit=limit,
        max_length=max_length,
        trust_remote_code=trust,
    )


def _trajectory(source: Config) -> Any:
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir

    t = source.model.trajectory
    base = TrajectorySpec.default() if t.preset == "default" else TrajectorySpec.tiny()
    spec = base if base.seed == t.seed else type(base)(**{**base.__dict__, "seed": t.seed})
    cache = Path(t.cache_dir).expanduser() if t.cache_dir else default_cache_dir()
    return build_trajectory(spec, cache, progress=False)


# -- loading and scoring ---------------------------------------------------------------------------
def _check_artifacts(local: Path, uri: str) -> None:
    """A registered version whose files were deleted from the artifact store after it was registered
    downloads as an empty (or partial) folder: name what is missing, not a flavor it cannot show."""
    missing = [] if (local / "MLmodel").is_file() else ["MLmodel"]
    model_dir = local / "model"
    if model_dir.is_dir() or not missing:
        if not (model_dir / "config.json").is_file():
            missing.append("model/config.json")
        if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
            missing.append("model/*.safetensors")
    elif missing:
        missing.append("model/")
    if missing:
        raise CheckpointError(
            f"{uri}: its model files are missing from the artifact store ({', '.join(missing)}): they were "
            "deleted or moved after it was registered; restore them, or set the alias that promote reads "
            "(registry.alias) on another version"
        )


def load_registered(
    name: str, version: str, tracking_uri: str, device: str, dtype: str, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Download ``models:/NAME/VERSION`` and load its transformers model and tokenizer."""
    import mlflow
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="ckptmerge-promote-") as tmp:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{version}", dst_path=tmp, tracking_uri=tracking_uri
                )
            )
        except Exception as e:
            raise TrackingError(f"cannot download models:/{name}/{version}: {str(e).splitlines()[0][:300]}") from None
        _check_artifacts(local, f"models:/{name}/{version}")
        meta = yaml.safe_load((local / "MLmodel").read_text()) or {}
        flavor = (meta.get("flavors") or {}).get("transformers")
        if not flavor:
            raise CheckpointError(
                f"models:/{name}/{version} is not a transformers model (flavors: {sorted(meta.get('flavors') or {})})"
            )
        model_dir = local / flavor.get("model_binary", "model")
        tok_dir = local / "components" / "tokenizer"
        if "tokenizer" not in (flavor.get("components") or []) or not tok_dir.is_dir():
            tok_dir = model_dir
        torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code
            )
            tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"models:/{name}/{version} does not load: {str(e).splitlines()[0][:300]}") from None
    if device == "cpu" and dtype == "auto" and model.dtype in (torch.float16, torch.bfloat16):
        model = model.float()  # half precision is slow and lossy on a CPU
    return model.to(device).eval(), tok  # type: ignore[arg-type]  # transformers' wrapped .to() stub


def _device(name: str) -> str:
    from ckptmerge.resident import resolve_device

    return resolve_device(name)


class Judge:
    """The test suite and the score, built once; evaluates registered versions."""

    def __init__(self, cfg: Config, tasks: PromotionTasks, registry_name: str, tracking_uri: str) -> None:
        from ckptmerge.evaluation import TaskSuite, build_objective

        self.cfg, self.tasks, self.name, self.uri = cfg, tasks, registry_name, tracking_uri
        seed = cfg.search.seed  # one seed, as in a search: the documents sampled under eval.limit and the resamples
        self.suite = TaskSuite(tasks.names, tasks.include_paths, tasks.limit, "eval.test_tasks", sample_seed=seed)
        try:
            self.score = build_objective(self.suite.info, cfg.eval.metrics, cfg.eval.weights, allow_test_split=True)
        except ConfigError as e:
            raise ConfigError(f"{e} (action=promote scores the test tasks {list(tasks.names)})") from None
        self.bootstrap = Bootstrap(cfg.eval.bootstrap, cfg.eval.confidence, seed=seed)
        self.device = _device(cfg.runtime.device)

    def evaluate(self, who: Contender) -> None:
        import torch

        from ckptmerge.evaluation import make_lm

        model, tok = load_registered(
            self.name, who.version, self.uri, self.device, self.cfg.runtime.dtype, self.tasks.trust_remote_code
        )
        lm = make_lm(model, tok, self.cfg.eval.batch_size, self.tasks.max_length, self.device)
        with torch.no_grad():
            who.metrics, who.scores = self.suite.evaluate_with_scores(lm)
        who.score = self.score(who.metrics)
        if not math.isfinite(who.score):
            raise CkptMergeError(
                f"the {who.alias} version {who.version} scores {who.score} on {list(self.tasks.names)}"
            )
        log.info("%s v%s: score %.6f (%s)", who.alias, who.version, who.score, self.score.describe())
        del model, lm

    def gains(self, candidate: Contender, champion: Contender) -> tuple[Gain, dict[str, Gain]]:
        """The score's paired gain, candidate - champion, and each scored metric's (positive: the candidate is "
        "better)."""
        assert candidate.scores is not None and champion.scores is not None
        terms = [t for t in self.score.terms if t.weight != 0]
        missing = [t.key for t in terms if t.key not in candidate.scores or t.key not in champion.scores]
        if missing:  # e.g. a group's aggregate: lm-eval logs documents per subtask, not per group
            raise EvaluationError(
                f"no per-document scores for {missing}, so the gain has no interval; "
                "name the subtasks themselves in eval.test_tasks"
            )
        try:
            gain = self.bootstrap.objective_gain(self.score, candidate.scores, champion.scores)
            per_metric = {
                t.key: self.bootstrap.metric_gain(
                    t.key, t.higher_is_better, candidate.scores[t.key], champion.scores[t.key]
                )
                for t in terms
            }
        except ValueError as e:  # scored on different documents: the sample is not the same for both
            raise EvaluationError(f"the candidate and the champion cannot be compared: {e}") from None
        return gain, per_metric


# -- the action ----------------------------------------------------------------------------------
def run_promote(cfg: Config, run_dir: Path, cwd: Path, config_yaml: str = "") -> dict[str, Any]:
    """Evaluate candidate and champion, move the champion alias if the candidate wins; ``result.json``."""
    reg = cfg.registry
    name = reg.name
    check_registry_name(name)
    tracker = SearchTracker(cfg.tracking, cwd)  # an unreachable store fails here, in seconds
    client = tracker.client
    _check_registered(client, name, tracker.uri)
    candidate = _version_by_alias(client, name, reg.alias, required=True)
    champion = _version_by_alias(client, name, reg.champion_alias, required=False)
    assert candidate is not None
    already = champion is not None and champion.version == candidate.version
    if already:  # nothing to compare
        tasks, judge = PromotionTasks(names=(), include_paths=(), limit=None, max_length=None), None
    else:
        source, result = _source_config(tracker.uri, candidate.run_id)
        tasks = promotion_tasks(cfg, source, result)
        judge = Judge(cfg, tasks, name, tracker.uri)  # unknown tasks fail before the promotion run opens

    models = [{"name": reg.alias, "source": f"models:/{name}/{candidate.version}"}]
    if champion is not None:
        models.append({"name": reg.champion_alias, "source": f"models:/{name}/{champion.version}"})
    run_id = tracker.start(
        run_name=f"promote-{name}-v{candidate.version}",
        config=cfg.to_dict(),
        config_yaml=config_yaml,
        checkpoints=models,
        tags={names.TAG_KIND: "promotion", "ckptmerge.registered_model": name},
    )
    with tracker.finishing():
        promotion = (
            _decide(cfg, judge, candidate, champion)
            if judge
            else PromotionDecision(
                UNCHANGED, f"candidate v{candidate.version} is already {reg.champion_alias}; nothing evaluated"
            )
        )
        outcome = _record(cfg, tracker, judge, candidate, champion, promotion, tasks)
    outcome["mlflow"] = {"tracking_uri": tracker.display_uri, "experiment_id": tracker.experiment_id, "run_id": run_id}
    outcome = redact_data(outcome)  # no password or token in what is printed (main writes it as result.json)
    _print_summary(outcome)
    return outcome


def _decide(cfg: Config, judge: Judge, candidate: Contender, champion: Contender | None) -> PromotionDecision:
    judge.evaluate(candidate)
    if champion is None:
        return PromotionDecision(
            FIRST,
            f"first candidate v{candidate.version} becomes {cfg.registry.champion_alias} "
            "(there was none to compare with)",
        )
    judge.evaluate(champion)
    gain, task_gains = judge.gains(candidate, champion)
    return gate(
        gain,
        task_gains,
        float(cfg.registry.promote_margin),
        cfg.registry.allow_task_regression,
        candidate.version,
        champion.version,
    )


def gate(
    gain: Gain, task_gains: dict[str, Gain], margin: float, allow_task_regression: bool, candidate: str, champion: str
) -> PromotionDecision:
    """The rule: promote when the gain's lower bound is above ``margin`` and no scored metric is
    significantly worse (unless allowed); the reason names the interval and any regressing metric."""
    regressions = tuple(k for k, g in task_gains.items() if g.ci_high < 0)  # NaN (no interval) is no evidence
    worse = "; ".join(
        f"{k} ({g.value:+.5f}, {g.confidence:.0%} CI [{g.ci_low:+.5f}, {g.ci_high:+.5f}])"
        for k, g in task_gains.items()
        if k in regressions
    )
    interval = gain.describe()
    if not math.isfinite(gain.ci_low):  # too few finite resamples: no claim either way
        return PromotionDecision(
            KEPT,
            f"kept champion v{champion}: candidate v{candidate} gains {gain.value:+.5f} with no "
            "interval (too few finite bootstrap resamples)",
            gain,
            task_gains,
            regressions,
        )
    clears = gain.ci_low > margin
    if clears and (not regressions or allow_task_regression):
        note = f", allowed by registry.allow_task_regression=true: regresses on {worse}" if regressions else ""
        return PromotionDecision(
            PROMOTED,
            f"promoted candidate v{candidate} over champion v{champion}: gains {interval}, "
            f"lower bound above the margin {margin:g}{note}",
            gain,
            task_gains,
            regressions,
        )
    if clears:
        why = f"regresses on {worse}"
    elif gain.significant and gain.ci_high < 0:
        why = "significantly worse"
    elif not gain.significant:
        why = "within noise"
    else:
        why = f"significant, but the lower bound does not clear the margin {margin:g}"
    if regressions and not clears:
        why += f"; regresses on {worse}"
    return PromotionDecision(
        KEPT,
        f"kept champion v{champion}: candidate v{candidate} gains {interval}: {why}",
        gain,
        task_gains,
        regressions,
    )


def _record(
    cfg: Config,
    tracker: SearchTracker,
    judge: Judge | None,
    candidate: Contender,
    champion: Contender | None,
    promotion: PromotionDecision,
    tasks: PromotionTasks,
) -> dict[str, Any]:
    """Move the alias if decided, tag the candidate version (and a replaced champion), log the run."""
    reg, client, name = cfg.registry, tracker.client, cfg.registry.name
    decision, gain = promotion.decision, promotion.gain
    margin = float(reg.promote_margin)
    new_champion = candidate.version if decision in (FIRST, PROMOTED, UNCHANGED) else champion.version  # type: ignore[union-attr]
    if decision in (FIRST, PROMOTED):
        client.set_registered_model_alias(name, reg.champion_alias, candidate.version)
    definition = judge.score.describe() if judge else ""
    tags = {
        "decision": decision,
        "candidate_score": "" if candidate.score is None else f"{candidate.score:.6f}",
        "champion_score": "" if champion is None or champion.score is None else f"{champion.score:.6f}",
        "champion_version": "" if champion is None else champion.version,
        "margin": f"{margin:g}",
        "score_definition": definition,
        "test_tasks": ",".join(tasks.names),
        "run_id": tracker.run_id or "",
        "reason": promotion.reason,
        # the score's gain, candidate - champion, and its interval ("" when there was nothing to compare)
        "gain": "" if gain is None else f"{gain.value:.6f}",
        "gain_ci_low": "" if gain is None else f"{gain.ci_low:.6f}",
        "gain_ci_high": "" if gain is None else f"{gain.ci_high:.6f}",
        "gain_p_value": "" if gain is None else f"{gain.p_value:.4g}",
        "gain_significant": "" if gain is None else str(gain.significant).lower(),
        "confidence": f"{cfg.eval.confidence:g}",
        "regressions": ",".join(promotion.regressions),
        "allow_task_regression": str(reg.allow_task_regression).lower(),
    }
    if decision != UNCHANGED:  # a re-run on the champion itself keeps the tags of the decision that made it
        for k, v in tags.items():
            client.set_model_version_tag(name, candidate.version, TAG_PREFIX + k, v[:4000])  # under MLflow's 5000
    if decision == PROMOTED:
        client.set_model_version_tag(name, champion.version, TAG_PREFIX + "replaced_by", candidate.version)  # type: ignore[union-attr]
    metrics: dict[str, float] = {"promote_margin": margin}
    for role, who in (("candidate", candidate), ("champion", champion)):  # by role, whatever the aliases
        if who is None or who.score is None:
            continue
        metrics[f"{role}_score"] = who.score
        metrics.update({f"{role}.{k}": v for k, v in who.metrics.items()})
    if gain is not None:  # score_gain and score_gain.ci_low/.ci_high/.p_value/.significant
        metrics.update(gain.as_metrics("score_gain"))
        for key, g in promotion.task_gains.items():
            metrics.update(g.as_metrics(names.safe_key(f"task_gain.{key}")))
        metrics["regressions"] = float(len(promotion.regressions))
    tracker.log_metrics(metrics)
    tracker.set_tags(
        {
            "promotion.decision": decision,
            "promotion.candidate_version": candidate.version,
            "promotion.champion_version": "" if champion is None else champion.version,
            "promotion.new_champion": new_champion,
            "promotion.score_definition": definition,
            "promotion.reason": promotion.reason[:4000],
            "promotion.regressions": ",".join(promotion.regressions),
        }
    )
    outcome = {
        "registered_model": name,
        "decision": decision,
        "margin": margin,
        "reason": promotion.reason,
        "score_definition": definition,
        "test_tasks": list(tasks.names),
        "limit": tasks.limit,
        # paired bootstrap over the test documents: + means the candidate is better
        "gain": None if gain is None else gain.as_json(),
        "task_gains": {k: g.as_json() for k, g in promotion.task_gains.items()},
        "regressions": list(promotion.regressions),
        "allow_task_regression": reg.allow_task_regression,
        "bootstrap": {"resamples": cfg.eval.bootstrap, "confidence": cfg.eval.confidence, "seed": cfg.search.seed},
        "candidate": {
            "alias": reg.alias,
            "version": candidate.version,
            "score": candidate.score,
            "metrics": candidate.metrics,
        },
        "champion": None
        if champion is None
        else {
            "alias": reg.champion_alias,
            "version": champion.version,
            "score": champion.score,
            "metrics": champion.metrics,
        },
        "new_champion": {
            "alias": reg.champion_alias,
            "version": new_champion,
            "model_uri": f"models:/{name}@{reg.champion_alias}",
        },
    }
    tracker.log_text(None, json.dumps(outcome, indent=2), "promotion.json")
    return outcome


def _print_summary(o: dict[str, Any]) -> None:
    cand, champ, name = o["candidate"], o["champion"], o["registered_model"]

    def fmt(x: dict[str, Any] | None) -> str:
        if x is None:
            return "none"
        return f"v{x['version']}" + ("" if x["score"] is None else f" (score {x['score']:.5f})")

    print(
        f"promotion of {name}: {cand['alias']} {fmt(cand)} vs {o['new_champion']['alias']} {fmt(champ)}, "
        f"margin {o['margin']:g}"
    )
    if o["score_definition"]:
        print(f"score = {o['score_definition']}  on {', '.join(o['test_tasks'])}")
    if o["gain"] is not None:
        pct = f"{o['gain']['confidence']:.0%}"
        print(
            f"paired gains over the same documents, candidate - champion (+: the candidate is better; "
            f"* significant at {pct}):"
        )
        for key, g in {"score": o["gain"], **o["task_gains"]}.items():
            mark = "*" if g["significant"] else " "
            note = "  regresses" if key in o["regressions"] else ""
            print(f"  {key:<40} {g['value']:+.5f} [{g['ci_low']:+.5f}, {g['ci_high']:+.5f}] {mark}{note}")
    print(o["reason"])
    meaning = {
        FIRST: "first candidate becomes champion",
        PROMOTED: "candidate promoted",
        KEPT: "champion kept",
        UNCHANGED: "candidate is already champion",
    }[o["decision"]]
    print(f"decision: {o['decision']} ({meaning}); {o['new_champion']['model_uri']} = v{o['new_champion']['version']}")
    print(f"MLflow run {o['mlflow']['run_id']} (experiment {o['mlflow']['experiment_id']})")


def run(cfg: Config, context: Any) -> dict[str, Any]:
    """``action=promote``."""
    return run_promote(cfg, context.run_dir, context.cwd, context.config_yaml)
