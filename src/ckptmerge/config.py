"""Typed, frozen configuration objects, validated on construction.

Hydra stays in ``src/main.py``; it turns the composed config into a :class:`Config` with
:func:`config_from_dict`. Every error names the config key that is wrong, e.g.
``search.alpha must be in [0, 1), got 1.5``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptmerge.errors import ConfigError
from ckptmerge.registry import did_you_mean  # noqa: F401  - re-exported: older imports take it from here

MODEL_SOURCES = ("embedded", "local", "hub")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("auto", "float32", "float16", "bfloat16")
BACKENDS = ("single", "deepspeed")
TRAJECTORY_PRESETS = ("default", "tiny")
# model.order: check that known training steps increase oldest → newest, or take the order as given.
MODEL_ORDERS = ("check", "given")


def _choice(key: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not valid{did_you_mean(value, options)}")


@dataclass(frozen=True)
class TrajectoryConfig:
    """Which embedded trajectory to build (see :mod:`ckptmerge.trajectory`)."""

    preset: str = "default"
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        _choice("model.trajectory.preset", self.preset, TRAJECTORY_PRESETS)


@dataclass(frozen=True)
class ModelConfig:
    """Where the checkpoints come from. ``checkpoints`` are ordered oldest to newest; each entry is a
    local folder or ``repo@revision`` for a hub repo. For the embedded trajectory, ``select`` picks
    checkpoints by index (default: the last two). ``pair=i`` picks the adjacent pair i, i+1 (of the
    embedded trajectory, or of ``checkpoints``) instead, so a sweep ``model.pair=0,1,2`` covers a trajectory."""

    name: str = "embedded"
    source: str = "embedded"
    checkpoints: tuple[str, ...] = ()
    select: tuple[int, ...] = (-2, -1)
    trust_remote_code: bool = False
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    # Suggested lm-eval tasks for this model, used when eval.tasks / eval.test_tasks are empty, and
    # their weights in the objective (used when eval.weights is empty too; 0 = tracked, not optimised).
    dev_tasks: tuple[str, ...] = ()
    test_tasks: tuple[str, ...] = ()
    dev_weights: Mapping[str, float] = field(default_factory=dict)
    pair: int | None = None
    # check: refuse checkpoints whose training steps (folder names, trainer_state.json) are known and
    # do not increase oldest → newest; given: merge them in the order listed.
    order: str = "check"

    def __post_init__(self) -> None:
        _choice("model.source", self.source, MODEL_SOURCES)
        _choice("model.order", self.order, MODEL_ORDERS)
        if self.pair is not None:
            self._pick_pair()
        if self.source != "embedded":
            if len(self.checkpoints) < 2:
                raise ConfigError(
                    f"model.checkpoints needs at least 2 checkpoints to merge, got {len(self.checkpoints)}"
                )
            for i, c in enumerate(self.checkpoints):
                if not isinstance(c, str) or not c.strip():
                    raise ConfigError(f"model.checkpoints[{i}] must be a path or repo@revision, got {c!r}")
            if len(set(self.checkpoints)) != len(self.checkpoints):
                raise ConfigError("model.checkpoints lists the same checkpoint twice")
        else:
            if len(self.select) < 2:
                raise ConfigError(f"model.select needs at least 2 checkpoint indices, got {list(self.select)}")
            if len(set(self.select)) != len(self.select):
                raise ConfigError(f"model.select repeats an index: {list(self.select)}")

    def _pick_pair(self) -> None:
        """``pair=i`` overrides ``select`` (embedded) or narrows ``checkpoints`` (local, hub) to i, i+1."""
        i = self.pair
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ConfigError(
                f"model.pair must be an integer >= 0 (checkpoints i and i+1, oldest first) or null, got {i!r}"
            )
        if self.source == "embedded":
            object.__setattr__(self, "select", (i, i + 1))
            return
        if i + 1 >= len(self.checkpoints):
            raise ConfigError(
                f"model.pair={i} needs checkpoints {i} and {i + 1}, but model.checkpoints has {len(self.checkpoints)} "
                f"(pairs 0..{max(len(self.checkpoints) - 2, 0)})"
            )
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints[i : i + 2]))


@dataclass(frozen=True)
class MergeConfig:
    """How checkpoints are combined; ``weights`` and ``output_dir`` serve ``action=merge``."""

    method: str = "linear"
    weights: tuple[float, ...] | None = None
    output_dir: str | None = None
    overwrite: bool = False
    shard_size: str = "2GB"
    dtype: str = "auto"
    # action=merge only: write a merge of checkpoints holding NaN/Inf instead of refusing them.
    allow_nonfinite: bool = False
    # action=merge only: a mergekit YAML (linear) giving the checkpoints, weights and dtype instead.
    mergekit_config: str | None = None
    # The rest of merge.*: merge.method's settings (conf/merge/<method>.yaml), checked by the method.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ckptmerge.merge import method

        beside = [f.name for f in dataclasses.fields(self) if f.name != "settings"]
        method(self.method).make_settings(self.settings, "merge", beside)  # an unknown name or setting names its key
        _choice("merge.dtype", self.dtype, DTYPES)
        parse_size(self.shard_size, "merge.shard_size")
        if self.weights is not None:
            check_weights(self.weights, "merge.weights")


@dataclass(frozen=True)
class SpaceConfig:
    """``search/space``: which weightings of the checkpoints the search explores (see search/space.py).

    ``last``: how many of the newest checkpoints the space covers (the pair: exactly 2). The rest of
    the space's YAML is its own settings, checked by the space class itself.
    """

    name: str = "pair"
    last: int = 2
    warm_start: bool = True  # spaces other than the pair begin with the cheap baselines' weightings
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ckptmerge.search.space import make_space

        if not isinstance(self.last, int) or isinstance(self.last, bool) or self.last < 2:
            raise ConfigError(f"search.space.last must be an integer >= 2, got {self.last!r}")
        if not isinstance(self.warm_start, bool):
            raise ConfigError(f"search.space.warm_start must be true or false, got {self.warm_start!r}")
        make_space(self.name, 2 if self.name == "pair" else self.last, 0.0, self.settings)  # name and settings


@dataclass(frozen=True)
class SearchConfig:
    """The search over λ ∈ [alpha, 1]: ``budget`` counts every evaluation, initial points included."""

    kind: str = "bo"
    space: SpaceConfig = field(default_factory=SpaceConfig)
    budget: int = 10
    alpha: float = 0.0
    seed: int = 0
    acq_func: str = "gp_hedge"
    # Two λ closer than this count as the same point; the search never evaluates a point twice.
    min_distance: float = 1e-3
    # auto: continue the newest unfinished search with the same resume key (same command again);
    # never: always start afresh; or an MLflow run id to continue that search.
    resume: str = "auto"
    # Which evaluated point is the result: the best of the GP's posterior mean over the evaluated points
    # (robust to a lucky draw of the noise), or the best single observation.
    select: str = "posterior_mean"
    # converged: a bo search ends once no point of the space is expected to beat the incumbent by more
    # than stop_margin of its paired standard errors, patience proposals in a row (budget stays the cap);
    # budget: always spend the whole budget (docs/search-spaces.md)
    stop: str = "converged"
    stop_margin: float = 1.0
    patience: int = 2

    def __post_init__(self) -> None:
        from ckptmerge.search.searchers import SEARCHERS

        SEARCHERS.get(self.kind)  # an unknown searcher names search.kind
        _choice("search.select", self.select, ("posterior_mean", "observed"))
        if not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < 2:
            raise ConfigError(
                f"search.budget must be an integer >= 2 (λ=alpha and λ=1 come first), got {self.budget!r}"
            )
        if not _is_number(self.alpha) or not 0.0 <= float(self.alpha) < 1.0:
            raise ConfigError(f"search.alpha must be in [0, 1), got {self.alpha!r}")
        # skopt, numpy and torch all take this seed; numpy accepts only [0, 2**32).
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"search.seed must be an integer in [0, 2**32), got {self.seed!r}")
        _choice("search.acq_func", self.acq_func, ("gp_hedge", "EI", "PI", "LCB"))
        _choice("search.stop", self.stop, ("converged", "budget"))
        if not _is_number(self.stop_margin) or not 0.0 <= float(self.stop_margin) <= 10.0:
            raise ConfigError(
                f"search.stop_margin must be a number in [0, 10] (paired standard errors), got {self.stop_margin!r}"
            )
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 1:
            raise ConfigError(f"search.patience must be an integer >= 1, got {self.patience!r}")
        if not isinstance(self.resume, str) or not self.resume.strip():
            raise ConfigError(f"search.resume must be auto, never or an MLflow run id, got {self.resume!r}")
        if not _is_number(self.min_distance) or not 0 < self.min_distance < 0.5:
            raise ConfigError(f"search.min_distance must be in (0, 0.5), got {self.min_distance!r}")
        max_points = int(math.floor((1.0 - float(self.alpha)) / self.min_distance)) + 1
        if max_points < 2:  # λ=alpha and λ=1 are one point: no budget could help, alpha is the problem
            raise ConfigError(
                f"search.alpha={self.alpha} leaves no room to search: λ=alpha and λ=1 are closer than "
                f"search.min_distance={self.min_distance}; use search.alpha <= {1.0 - self.min_distance:g}"
            )
        if self.budget > max_points:
            raise ConfigError(
                f"search.budget={self.budget} exceeds the {max_points} distinct λ that fit in "
                f"[{self.alpha}, 1] at search.min_distance={self.min_distance}"
            )


@dataclass(frozen=True)
class EvalConfig:
    """lm-eval tasks: ``tasks`` form the objective (dev), ``test_tasks`` are reported only.

    ``metrics`` maps a task to the metric that enters the objective (default: the task's first
    metric); ``weights`` maps a task to its weight in the objective (default 1).
    """

    tasks: tuple[str, ...] = ()
    test_tasks: tuple[str, ...] = ()
    include_path: str | None = None
    limit: int | None = None
    metrics: Mapping[str, str] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    batch_size: int = 16
    max_length: int | None = None
    allow_test_split: bool = False
    # Every gain is a paired bootstrap over documents with `bootstrap` resamples and an interval at
    # `confidence`.
    confidence: float = 0.95
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        if not _is_number(self.confidence) or not 0.5 <= float(self.confidence) < 1:
            raise ConfigError(f"eval.confidence must be in [0.5, 1), got {self.confidence!r}")
        if (
            not isinstance(self.bootstrap, int)
            or isinstance(self.bootstrap, bool)
            or not 100 <= self.bootstrap <= 100_000
        ):
            raise ConfigError(f"eval.bootstrap must be an integer in [100, 100000], got {self.bootstrap!r}")
        for key, tasks in (("eval.tasks", self.tasks), ("eval.test_tasks", self.test_tasks)):
            for i, t in enumerate(tasks):
                if not isinstance(t, str) or not t.strip():
                    raise ConfigError(f"{key}[{i}] must be a task name, got {t!r}")
            if len(set(tasks)) != len(tasks):
                raise ConfigError(f"{key} lists a task twice: {list(tasks)}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ConfigError(f"eval.limit must be a positive integer or null, got {self.limit!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be a positive integer, got {self.batch_size!r}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 8):
            raise ConfigError(f"eval.max_length must be an integer >= 8 or null, got {self.max_length!r}")
        # Which tasks metrics/weights may name is checked against the effective dev tasks when the
        # objective is built (the model may supply them).
        for task, w in self.weights.items():
            if not _is_number(w) or not math.isfinite(float(w)) or float(w) < 0:
                raise ConfigError(f"eval.weights.{task} must be a number >= 0 (0: tracked, not optimised), got {w!r}")
        if (
            self.weights
            and not any(float(w) > 0 for w in self.weights.values())
            and set(self.weights) >= set(self.tasks)
        ):
            raise ConfigError("eval.weights gives every dev task weight 0; nothing would be optimised")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking. ``uri`` None means a sqlite file ``mlflow.db`` in the working directory."""

    uri: str | None = None
    experiment: str = "ckptmerge"
    artifact_location: str | None = None
    log_plots: bool = True

    def __post_init__(self) -> None:
        if not self.experiment or not str(self.experiment).strip():
            raise ConfigError("tracking.experiment must be a non-empty name")


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow model registry: the best merge becomes a new version of ``name`` with ``alias``."""

    name: str = "ckptmerge-embedded"
    enabled: bool = True
    alias: str = "candidate"
    # The written merge is reloaded and re-scored; it must match the search's objective within this
    # relative tolerance (fp32 math is bitwise identical; a half-precision output dtype rounds).
    rescore_tolerance: float = 1e-3
    # action=promote: `champion_alias` moves to the `alias` version only when its test score (the
    # objective over the test tasks, higher is better) beats the champion's by more than `promote_margin`
    # with significance: the lower bound of the paired interval (eval.confidence) is above the margin.
    champion_alias: str = "champion"
    promote_margin: float = 0.0
    # ...and no test task's scored metric is significantly worse (its interval below 0), unless this is
    # true: a trade-off between tasks the weights allow is then accepted.
    allow_task_regression: bool = False
    # A search registers its merge only when the dev gain over the newest checkpoint is significant
    # (its interval at eval.confidence excludes 0); false registers anyway, tagged as not significant.
    require_significant_gain: bool = True

    def __post_init__(self) -> None:
        if self.enabled:
            check_registry_name(self.name)
        if not _is_number(self.rescore_tolerance) or not 0 <= self.rescore_tolerance < 1:
            raise ConfigError(f"registry.rescore_tolerance must be in [0, 1), got {self.rescore_tolerance!r}")
        for key, alias in (("registry.alias", self.alias), ("registry.champion_alias", self.champion_alias)):
            if not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias):
                raise ConfigError(f"{key} must be a name of letters, digits, '_' and '-', got {alias!r}")
        if self.alias == self.champion_alias:
            raise ConfigError(f"registry.champion_alias must differ from registry.alias (both {self.alias!r})")
        if (
            not _is_number(self.promote_margin)
            or not math.isfinite(float(self.promote_margin))
            or self.promote_margin < 0
        ):
            raise ConfigError(f"registry.promote_margin must be a number >= 0, got {self.promote_margin!r}")
        if not isinstance(self.allow_task_regression, bool):
            raise ConfigError(
                f"registry.allow_task_regression must be true or false, got {self.allow_task_regression!r}"
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the resident model lives and in which dtype."""

    name: str = "cpu"
    device: str = "cpu"
    dtype: str = "auto"
    threads: int | None = None
    # ``deepspeed``: the resident model is partitioned over the ranks of the ``deepspeed`` launcher
    # (ZeRO stage 3); rank 0 searches and tracks, every rank merges its own partition and evaluates
    # its share of the requests.
    backend: str = "single"
    deepspeed_config: str | None = None  # a DeepSpeed JSON whose keys override ours (e.g. offload)
    timeout_s: int = 1800  # a collective that waits longer than this fails the run

    def __post_init__(self) -> None:
        _choice("runtime.device", self.device, DEVICES)
        _choice("runtime.dtype", self.dtype, DTYPES)
        _choice("runtime.backend", self.backend, BACKENDS)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"runtime.threads must be a positive integer or null, got {self.threads!r}")
        if not isinstance(self.timeout_s, int) or isinstance(self.timeout_s, bool) or self.timeout_s < 1:
            raise ConfigError(f"runtime.timeout_s must be a positive number of seconds, got {self.timeout_s!r}")


def compare_methods() -> tuple[str, ...]:
    """``action=compare``'s default methods: every registered baseline (``newest`` first), then our
    searches: ``bo`` (the pair), ``bo_<space>`` for every wider search space, and the other searchers."""
    from ckptmerge.merge import baseline_names
    from ckptmerge.search.searchers import SEARCHERS
    from ckptmerge.search.space import SPACES, make_space

    make_space("pair", 2)  # registers the built-in families
    spaces = [f"bo_{s}" for s in SPACES if s != "pair"]
    return (*baseline_names(), "bo", *spaces, *(k for k in SEARCHERS if k != "bo"))


def searched_method(method: str) -> tuple[str, str] | None:
    """``(searcher, space)`` for a compare method that searches: ``bo`` is the pair, ``bo_ema`` the EMA
    family, and so on for every registered searcher and space; None for a baseline or an unknown name."""
    from ckptmerge.search.searchers import SEARCHERS
    from ckptmerge.search.space import SPACES, make_space

    make_space("pair", 2)  # registers the built-in families
    kind, _, space = method.partition("_")
    if kind in SEARCHERS and (not space or space in SPACES):
        return kind, space or "pair"
    return None


@dataclass(frozen=True)
class PilotConfig:
    """``action=pilot``: every checkpoint alone and every pair merged at ``lambda``."""

    # float annotation: Hydra gives 0.5 as float but a user may write 1
    lam: float = 0.5

    def __post_init__(self) -> None:
        if not _is_number(self.lam) or not 0.0 <= float(self.lam) <= 1.0:
            raise ConfigError(f"pilot.lam must be in [0, 1], got {self.lam!r}")


@dataclass(frozen=True)
class CompareConfig:
    """``action=compare``: merge methods run on the same checkpoints, dev objective and budget."""

    # every registered baseline, then our searches (see compare_methods); null in the YAML means the same
    methods: tuple[str, ...] = field(default_factory=compare_methods)
    last: int = 4  # multi-checkpoint methods use the last N checkpoints of the trajectory
    # Each method's settings over its defaults (conf/merge/<method>.yaml), e.g. {fisher: {floor: 1e-6}}
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    calibration_path: str | None = None  # JSONL with "text"; the embedded trajectory brings its own
    register: bool = False

    def __post_init__(self) -> None:
        from ckptmerge.merge import METHODS

        if self.methods is None:
            object.__setattr__(self, "methods", compare_methods())
        if not self.methods:
            raise ConfigError("compare.methods is empty")
        for m in self.methods:
            if m not in METHODS and searched_method(m) is None:
                raise ConfigError(f"compare.methods: unknown method {m!r}{did_you_mean(m, compare_methods())}")
        if not isinstance(self.settings, Mapping):
            raise ConfigError(f"compare.settings must map method names to their settings, got {self.settings!r}")
        for name, options in self.settings.items():
            if name not in METHODS:
                raise ConfigError(f"compare.settings.{name}: not a known merge method{did_you_mean(name, METHODS)}")
            if not isinstance(options, Mapping):
                raise ConfigError(f"compare.settings.{name} must be a mapping of settings, got {options!r}")
            METHODS.get(name).make_settings(options, f"compare.settings.{name}")
        if not isinstance(self.last, int) or isinstance(self.last, bool) or self.last < 2:
            raise ConfigError(f"compare.last must be an integer >= 2, got {self.last!r}")

    def method_settings(self, name: str) -> Any:
        """The settings of merge method ``name`` in this comparison: its defaults, then compare.settings.NAME."""
        from ckptmerge.merge import method

        return method(name).make_settings(self.settings.get(name, {}), f"compare.settings.{name}")


# compare.* keys that became a merge method's settings, for a one-line hint instead of "unknown key"
MOVED_COMPARE_KEYS = {
    "lawa_k": "lawa.k",
    "ema_beta": "ema.beta",
    "fisher_tokens": "fisher.tokens",
    "fisher_floor": "fisher.floor",
    "regmean_alpha": "regmean.alpha",
    "gram_tokens": "regmean.tokens",
}


@dataclass(frozen=True)
class WatchConfig:
    """``action=watch``: search each new adjacent pair of checkpoints a trainer writes into ``dir``."""

    dir: str | None = None
    poll_s: float = 30.0
    # exit 0 after this long with nothing new (no new checkpoint, no pending one changing); null: until stopped
    idle_exit_s: float | None = None
    # a checkpoint without a trainer's completion marker is used once its files are unchanged this long
    settle_s: float = 10.0
    # run action=promote's policy after each registered candidate
    promote: bool = False
    # each pair's search also starts from the point the previous pair's search chose (ckptmerge.watch.warm)
    warm_start: bool = True

    def __post_init__(self) -> None:
        for key in ("poll_s", "settle_s"):
            v = getattr(self, key)
            if not _is_number(v) or not math.isfinite(float(v)) or v < 0 or (key == "poll_s" and v == 0):
                raise ConfigError(
                    f"watch.{key} must be a number of seconds {'> 0' if key == 'poll_s' else '>= 0'}, got {v!r}"
                )
        if self.idle_exit_s is not None and (
            not _is_number(self.idle_exit_s) or not math.isfinite(float(self.idle_exit_s)) or self.idle_exit_s < 0
        ):
            raise ConfigError(f"watch.idle_exit_s must be a number of seconds >= 0 or null, got {self.idle_exit_s!r}")
        for flag in ("promote", "warm_start"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"watch.{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.dir is not None and (not isinstance(self.dir, str) or not self.dir.strip()):
            raise ConfigError(f"watch.dir must be a folder path, got {self.dir!r}")


# action=watch fills model.checkpoints pair by pair from watch.dir; these stand in while the config is checked.
WATCH_PLACEHOLDERS = ("<older from watch.dir>", "<newer from watch.dir>")


@dataclass(frozen=True)
class Config:
    """The whole run: one action over one set of checkpoints."""

    action: str = "search"
    # modules imported before the config is checked: merge methods, spaces, searchers or actions of your own
    plugins: tuple[str, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    pilot: PilotConfig = field(default_factory=PilotConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)

    def __post_init__(self) -> None:
        from ckptmerge.actions.registry import ACTIONS

        action = ACTIONS.get(self.action)  # an unknown action names the key, with a suggestion
        if self.action == "watch":
            if not self.watch.dir:
                raise ConfigError("action=watch needs watch.dir=DIR (the folder the trainer writes checkpoints into)")
            if self.model.source != "local":
                raise ConfigError(
                    f"action=watch reads its checkpoints from watch.dir; use model=local, not model={self.model.name}"
                )
        if self.action == "merge":
            if self.merge.weights is None and not self.merge.mergekit_config:
                raise ConfigError("action=merge needs merge.weights=[w1,...,wk] (or merge.mergekit_config=FILE)")
            if not self.merge.output_dir:
                raise ConfigError("action=merge needs merge.output_dir=DIR")
        elif self.merge.mergekit_config:
            raise ConfigError(f"merge.mergekit_config is read by action=merge only, not action={self.action}")
        if self.runtime.backend == "deepspeed" and not action.deepspeed:
            supported = ", ".join(n for n in ACTIONS if ACTIONS.get(n).deepspeed)
            raise ConfigError(
                f"action={self.action} does not run under runtime=deepspeed (it supports "
                f"{supported}); use runtime=cpu or runtime=cuda"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. for logging the resolved config; it reads back
        through :func:`config_from_dict` (the search space's settings in its YAML's form, flat)."""
        out = _plain(dataclasses.asdict(self))
        out["merge"] = {**{k: v for k, v in out["merge"].items() if k != "settings"}, **out["merge"]["settings"]}
        if not self.plugins:  # the dict hashes into resume keys (action=watch): unchanged when there are none
            del out["plugins"]
        space = out["search"]["space"]
        out["search"]["space"] = {**{k: v for k, v in space.items() if k != "settings"}, **space.get("settings", {})}
        return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_weights(weights: Any, key: str, allow_negative: bool = False) -> None:
    """Merge weights: at least two finite numbers summing to 1 (non-negative unless allowed)."""
    if len(weights) < 2:
        raise ConfigError(f"{key} needs at least 2 weights, got {list(weights)}")
    for i, w in enumerate(weights):
        if not _is_number(w) or not math.isfinite(float(w)):
            raise ConfigError(f"{key}[{i}] must be a finite number, got {w!r}")
        if w < 0 and not allow_negative:
            raise ConfigError(f"{key}[{i}] is negative ({w}); weights must be >= 0")
    if abs(sum(float(w) for w in weights) - 1.0) > 1e-6:
        raise ConfigError(f"{key} must sum to 1, got {sum(float(w) for w in weights):g}")


def check_registry_name(name: Any) -> None:
    """Names MLflow accepts and that are safe in a ``models:/NAME@alias`` URI."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("registry.name must be a non-empty string")
    bad = set(name) & set("/:@%?#\\\n\t")
    if bad or name != name.strip():
        raise ConfigError(
            f"registry.name={name!r} contains characters MLflow model URIs reject: {sorted(bad) or 'spaces'}"
        )


_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: Any, key: str) -> int:
    """``"2GB"``, ``"500MiB"`` or a number of bytes."""
    if _is_number(text) and text > 0:
        return int(text)
    s = str(text).strip().upper().replace(" ", "")
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if s.endswith(unit):
            num = s[: -len(unit)]
            try:
                value = float(num)
            except ValueError:
                break
            if value > 0:
                return int(value * _SIZE_UNITS[unit])
            break
    raise ConfigError(f"{key}={text!r} is not a size such as '2GB' or '500MiB'")


_SECTIONS = {
    "model": ModelConfig,
    "merge": MergeConfig,
    "search": SearchConfig,
    "eval": EvalConfig,
    "tracking": TrackingConfig,
    "registry": RegistryConfig,
    "runtime": RuntimeConfig,
    "pilot": PilotConfig,
    "compare": CompareConfig,
    "watch": WatchConfig,
}


def moved_compare_key(key: str) -> str | None:
    """Where a former ``compare.KEY`` went, or None when ``KEY`` did not move."""
    if key not in MOVED_COMPARE_KEYS:
        return None
    method, setting = MOVED_COMPARE_KEYS[key].split(".")
    return (
        f"compare.{key} is now the setting {setting} of merge method {method}: "
        f"+compare.settings.{MOVED_COMPARE_KEYS[key]}=VALUE (defaults in conf/merge/{method}.yaml)"
    )


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """Construct dataclass ``cls`` from ``data``: unknown keys are errors, lists become tuples."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    if cls is MergeConfig:  # the keys beside the common ones are merge.method's settings
        data = {
            **{k: v for k, v in data.items() if k in fields and k != "settings"},
            "settings": {k: v for k, v in data.items() if k not in fields or k == "settings"},
        }
    for key, value in data.items():
        if cls is CompareConfig and (hint := moved_compare_key(key)):
            raise ConfigError(hint)
        if key not in fields:
            raise ConfigError(f"unknown config key {prefix}.{key}{did_you_mean(key, fields)}")
        if key == "trajectory" and cls is ModelConfig:
            value = _build(TrajectoryConfig, value or {}, f"{prefix}.trajectory")
        elif key == "space" and cls is SearchConfig:
            value = _space(value, f"{prefix}.space")
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, Mapping):
            value = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
        elif value is None and cls in (EvalConfig, ModelConfig) and key in ("metrics", "weights", "dev_weights"):
            value = {}
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a wrongly typed value that a check compared or iterated
        raise ConfigError(f"{prefix}: {e}") from None


def _space(data: Any, prefix: str) -> SpaceConfig:
    """``search.space``: ``name``, ``last`` and ``warm_start`` are common; the other keys are the space's settings."""
    if isinstance(data, str):  # search.space=ema on the command line, where search/space=ema was meant
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix} must be a mapping, got {type(data).__name__}")
    common = {k: data[k] for k in ("name", "last", "warm_start") if k in data}
    return SpaceConfig(**common, settings={k: v for k, v in data.items() if k not in common})


def load_plugins(modules: Any) -> tuple[str, ...]:
    """Import each module of ``plugins`` (a module name, importable from the working directory or
    ``PYTHONPATH``): it registers its merge methods, search spaces, searchers or actions."""
    import importlib
    import os
    import sys

    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, (list, tuple)):
        raise ConfigError(f"plugins must be a list of module names, got {modules!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # as `python -m`: a module beside the command is found
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", name):
            raise ConfigError(f"plugins[{i}] must be a module name such as my_methods, got {name!r}")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins[{i}]: cannot import {name!r} ({e})") from None
    return tuple(modules)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a plain nested dict (as Hydra composes it) into a :class:`Config`."""
    kwargs: dict[str, Any] = {}
    if data.get("action") == "watch" and isinstance(data.get("model"), Mapping):
        given = data["model"].get("checkpoints") or ()
        if given:
            raise ConfigError("model.checkpoints is filled by action=watch from watch.dir; leave it out")
        data = {**data, "model": {**data["model"], "checkpoints": list(WATCH_PLACEHOLDERS)}}
    kwargs["plugins"] = load_plugins(data.get("plugins") or ())  # before the sections read the registries
    for key, value in data.items():
        if key in _SECTIONS:
            kwargs[key] = _build(_SECTIONS[key], value or {}, key)
        elif key == "action":
            kwargs[key] = value
        elif key == "plugins":
            continue
        elif key in ("hydra",):
            continue
        else:
            raise ConfigError(f"unknown config key {key}{did_you_mean(key, list(_SECTIONS) + ['action'])}")
    return Config(**kwargs)
