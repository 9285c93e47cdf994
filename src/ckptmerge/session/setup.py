"""What every action needs first: the checkpoints and the tasks, resolved and checked.

Everything here is cheap next to a search, and runs before the resident model is built, so bad input
fails in seconds with one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ckptmerge.checkpoints import CheckpointSet
from ckptmerge.checkpoints.checkpoint_set import ReadOptions
from ckptmerge.checkpoints.content import check_before_reading, check_content
from ckptmerge.checkpoints.inline_checks import InlineChecks
from ckptmerge.config import CompareConfig, EvalConfig, ModelConfig, SearchConfig, SpaceConfig
from ckptmerge.errors import ConfigError
from ckptmerge.search.searchers import Proposal
from ckptmerge.search.space import SearchSpace

log = logging.getLogger(__name__)

# Our own lm-eval YAML tasks that ship with the package (e.g. a wikitext task on its validation split).
PACKAGE_TASKS = Path(__file__).resolve().parent.parent / "evaluation" / "tasks"


@dataclass
class Sources:
    """Resolved checkpoints plus what the embedded trajectory contributes (tasks, max length)."""

    cset: CheckpointSet
    dev_tasks: tuple[str, ...]
    test_tasks: tuple[str, ...]
    include_paths: list[str] = field(default_factory=list)
    max_length: int | None = None
    dev_weights: dict[str, float] = field(default_factory=dict)
    calib_path: Path | None = None
    trajectory_root: Path | None = None
    # action=merge: the finite and digest checks still to run on the merge's own reads
    checks: InlineChecks | None = None


def _embedded_checkpoints(
    model: ModelConfig, progress: bool, all_checkpoints: bool = False
) -> tuple[list[str], object]:
    from ckptmerge.trajectory import TrajectorySpec, build_trajectory, default_cache_dir

    t = model.trajectory
    base = TrajectorySpec.default() if t.preset == "default" else TrajectorySpec.tiny()
    spec = base if base.seed == t.seed else type(base)(**{**base.__dict__, "seed": t.seed})
    cache = Path(t.cache_dir).expanduser() if t.cache_dir else default_cache_dir()
    traj = build_trajectory(spec, cache, progress=progress)
    n = len(traj.checkpoints)
    if all_checkpoints:
        return [str(c) for c in traj.checkpoints], traj
    picked = []
    for i in model.select:
        if not -n <= i < n:
            what = f"model.pair={model.pair}" if model.pair is not None else f"model.select index {i}"
            raise ConfigError(f"{what} is out of range: the embedded trajectory has {n} checkpoints")
        picked.append(str(traj.checkpoints[i]))
    order = sorted(range(len(picked)), key=lambda j: model.select[j] % n)
    return [picked[j] for j in order], traj


@dataclass(frozen=True)
class Purpose:
    """What the checkpoints are resolved for: a written merge (``action=merge``) takes a set with no
    tokenizer and, when ``allow_nonfinite`` (``merge.allow_nonfinite``), checkpoints holding NaN/Inf;
    every other action scores them, so it needs dev tasks and a tokenizer."""

    merge: bool = False
    allow_nonfinite: bool = False


SCORING = Purpose()


def _check_content(model: ModelConfig, purpose: Purpose, cset: CheckpointSet) -> InlineChecks | None:
    """What the checkpoints hold (see :mod:`ckptmerge.checkpoints.content`), before any trial or write.

    A written merge (``purpose.merge``) reads each input once: the checks that read no tensor data run
    here, and the finite and digest checks are returned to run on the merge stream's own reads
    (:mod:`ckptmerge.checkpoints.inline_checks`). Every other action builds a resident model or scores
    before anything is merged, so it runs the whole pass here.
    """
    merge = purpose.merge
    hint = (
        "; set merge.allow_nonfinite=true to write such a merge anyway"
        if merge
        else "; fix or leave out this checkpoint (only action=merge can take it, with merge.allow_nonfinite=true)"
    )
    # Only actions that score need a tokenizer in every checkpoint; a weights-only merge is legitimate.
    if merge:
        steps = check_before_reading(cset, order=model.order, tokenizer_required=False)
        return InlineChecks(cset, steps, allow_nonfinite=purpose.allow_nonfinite, nonfinite_hint=hint)
    check_content(cset, order=model.order, nonfinite_hint=hint, tokenizer_required=True)
    return None


def resolve_sources(
    model: ModelConfig,
    ev: EvalConfig,
    purpose: Purpose = SCORING,
    progress: bool = True,
    all_checkpoints: bool = False,
    check: bool = True,
) -> Sources:
    """Checkpoints (embedded, local or hub) of ``model.*`` checked to be mergeable, and the dev/test task
    lists (``eval.*``, else the model's own).

    ``all_checkpoints``: the whole embedded trajectory instead of ``model.select`` (pilot, compare).
    ``check``: run the content checks (a DeepSpeed rank other than 0 skips them: rank 0 ran them
    before it sent the start).
    """
    include = [str(Path(ev.include_path).expanduser().resolve())] if ev.include_path else []
    if ev.include_path and not Path(include[0]).exists():
        raise ConfigError(f"eval.include_path does not exist: {ev.include_path}")
    if model.source == "embedded":
        refs, traj = _embedded_checkpoints(model, progress, all_checkpoints)
        cset = CheckpointSet.from_refs(refs, trust_remote_code=False)
        checks = _check_content(model, purpose, cset) if check else None
        return Sources(
            cset=cset,
            checks=checks,
            dev_tasks=ev.tasks or model.dev_tasks or traj.dev_tasks,  # type: ignore[attr-defined]
            test_tasks=ev.test_tasks or (() if ev.tasks else (model.test_tasks or traj.test_tasks)),  # type: ignore[attr-defined]
            dev_weights=_weights(model, ev),
            include_paths=[str(traj.tasks_dir)] + include + [str(PACKAGE_TASKS)],  # type: ignore[attr-defined]
            max_length=ev.max_length or traj.max_length,  # type: ignore[attr-defined]
            trajectory_root=traj.root,  # type: ignore[attr-defined]
            calib_path=traj.calib_path,  # type: ignore[attr-defined]
        )
    dev_tasks = ev.tasks or model.dev_tasks
    if not dev_tasks and not purpose.merge:
        raise ConfigError(
            "eval.tasks is empty: name the lm-eval dev tasks that form the objective, e.g. "
            "'eval.tasks=[ckptmerge_wikitext_dev]'"
        )
    cset = CheckpointSet.from_refs(
        list(model.checkpoints),
        trust_remote_code=model.trust_remote_code,
        options=ReadOptions(key_map=model.key_map, config=model.config, precision=model.precision),
    )
    checks = _check_content(model, purpose, cset) if check else None
    test_tasks = ev.test_tasks or (() if ev.tasks else model.test_tasks)
    return Sources(
        cset=cset,
        checks=checks,
        dev_tasks=dev_tasks,
        test_tasks=test_tasks,
        dev_weights=_weights(model, ev),
        include_paths=include + [str(PACKAGE_TASKS)],
        max_length=ev.max_length,
    )


def local_checkpoint_folders(model: ModelConfig) -> list[Path]:
    """The folders of ``model.checkpoints`` that exist here, before they are resolved: an output folder
    that is one of them is refused first, with the reason that no flag can change."""
    return [p for c in model.checkpoints if (p := Path(str(c)).expanduser()).is_dir()]


def newest_of(sources: Sources, last: int) -> Sources:
    """``sources`` narrowed to its newest ``last`` checkpoints (all of them when there are fewer)."""
    if len(sources.cset) > last:
        sources.cset = CheckpointSet(sources.cset.checkpoints[-last:], trust_remote_code=sources.cset.trust_remote_code)
    return sources


def resolve_search_sources(
    model: ModelConfig, ev: EvalConfig, space: SpaceConfig, progress: bool = True, check: bool = True
) -> Sources:
    """The checkpoints a search's space covers: the two selected ones for the pair; for a wider space
    (``search/space=simplex|ema|…``) the newest ``search.space.last`` of the trajectory (embedded, unless
    ``model.select`` names them) or of ``model.checkpoints``."""
    if space.name == "pair":
        return resolve_sources(model, ev, progress=progress, check=check)
    whole = model.source == "embedded" and tuple(model.select) == (-2, -1) and model.pair is None
    sources = newest_of(resolve_sources(model, ev, progress=progress, all_checkpoints=whole, check=check), space.last)
    if len(sources.cset) < space.last:
        log.info(
            "search/space=%s covers the %d checkpoints given (search.space.last=%d)",
            space.name,
            len(sources.cset),
            space.last,
        )
    return sources


def search_space(
    search: SearchConfig, compare: CompareConfig, k: int, name: str | None = None
) -> tuple[SearchSpace, list[Proposal] | None]:
    """The space ``name`` (default ``search/space``) over ``k`` checkpoints and its initial proposals: a
    warm start from the cheap baselines' weightings (``lawa`` and ``ema`` as in ``compare.settings``) for
    every space but the pair, whose initial points are the paper's (λ=α, λ=1)."""
    from ckptmerge.merge.soups import baseline_weightings
    from ckptmerge.search.searchers import warm_start
    from ckptmerge.search.space import make_space

    sp = search.space
    name = name or sp.name
    settings = sp.settings if name == sp.name else {}
    space = make_space(name, k, float(search.alpha), settings)
    configured = name == sp.name
    # the pair starts as in the paper (λ=α, λ=1) unless its config asks for the warm start
    if (configured and not sp.warm_start) or (not configured and space.is_pair):
        return space, None
    baselines = baseline_weightings(k, compare.method_settings("lawa").k, compare.method_settings("ema").beta)
    return space, warm_start(space, baselines, float(search.min_distance))


def _weights(model: ModelConfig, ev: EvalConfig) -> dict[str, float]:
    """eval.weights; the model's suggested weights apply only to the model's suggested tasks."""
    if ev.weights or ev.tasks:
        return dict(ev.weights)
    return dict(model.dev_weights)
