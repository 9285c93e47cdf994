"""The configuration schema: every key's type, range, choices and default, declared once.

Hydra stays at the edge (:mod:`ckptmerge.cli`); it composes ``conf/``, whose presets take these
defaults (:func:`ckptmerge.config_defaults.defaults_tree`), and hands the result to
:func:`config_from_dict`, the one validation step:

1. the ``plugins`` are imported (they may add merge methods, spaces, searchers, actions);
2. the **schema**: each section is a strictly typed frozen dataclass (:mod:`ckptmerge.schema`):
   ``no`` is not a boolean, ``true`` is not a count, an unknown key names the nearest one;
3. the **action's own rules** across sections (``action=merge`` needs weights, ``action=watch`` a folder
   and no checkpoints, ...);
4. the **registry names** (action, searcher, space, merge method, compare methods) and the settings of
   the ones named, read from the registries' declarations without importing any of them.

Every error is one line naming the full key, e.g. ``search.alpha must be in [0, 1), got 1.5``.
Importing and validating the config loads no torch and no searcher, space or merge-method module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from ckptmerge.config_rules import (  # noqa: F401  - compare_methods, searched_method: part of this API
    check_action,
    check_names,
    compare_methods,
    searched_method,
)
from ckptmerge.errors import ConfigError
from ckptmerge.plugins import load_plugins  # noqa: F401  - re-exported: config_from_dict imports them first
from ckptmerge.registry import did_you_mean  # noqa: F401  - re-exported: older imports take it from here
from ckptmerge.schema import Number, Text, key, section

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"  # registry aliases: what MLflow accepts in models:/NAME@ALIAS


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonEmptyText = Annotated[Text, AfterValidator(_non_empty)]


@section("model.trajectory")
class TrajectoryConfig:
    """Which embedded trajectory to build (see :mod:`ckptmerge.trajectory`)."""

    preset: Literal["default", "tiny"] = "default"
    seed: int = key(0, "an integer >= 0", ge=0)
    cache_dir: Text | None = None


@section("model")
class ModelConfig:
    """Where the checkpoints come from. ``checkpoints`` are ordered oldest to newest; each entry is a
    local folder or ``repo@revision`` for a hub repo. For the embedded trajectory, ``select`` picks
    checkpoints by index (default: the last two). ``pair=i`` picks the adjacent pair i, i+1 (of the
    embedded trajectory, or of ``checkpoints``) instead, so a sweep ``model.pair=0,1,2`` covers a trajectory."""

    name: Text = "embedded"
    source: Literal["embedded", "local", "hub"] = "embedded"
    checkpoints: tuple[Text, ...] = ()
    select: tuple[int, ...] = (-2, -1)
    trust_remote_code: bool = False
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    # Suggested lm-eval tasks for this model, used when eval.tasks / eval.test_tasks are empty, and
    # their weights in the objective (used when eval.weights is empty too; 0 = tracked, not optimised).
    dev_tasks: tuple[Text, ...] = ()
    test_tasks: tuple[Text, ...] = ()
    dev_weights: Mapping[str, Number] = field(default_factory=dict)
    pair: int | None = key(None, "an integer >= 0 (checkpoints i and i+1, oldest first) or null", ge=0)
    # check: refuse checkpoints whose training steps (folder names, trainer_state.json) are known and
    # do not increase oldest → newest; given: merge them in the order listed.
    order: Literal["check", "given"] = "check"
    # Training-native checkpoints (DeepSpeed ZeRO, PyTorch DCP; docs/checkpoints-and-tasks.md): a YAML of
    # rename/drop rules from their tensor names to the transformers model's, a transformers folder with
    # config.json and tokenizer when the checkpoint has none, and which ZeRO weights to read
    # (auto: transformers weights where the folder has them, else the fp32 masters; master; module).
    key_map: Text | None = None
    config: Text | None = None
    precision: Literal["auto", "master", "module"] = "auto"

    def __post_init__(self) -> None:
        for i, c in enumerate(self.checkpoints):
            if not c.strip():
                raise ConfigError(f"model.checkpoints[{i}] must be a path or repo@revision, got {c!r}")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ConfigError("model.checkpoints lists the same checkpoint twice")
        if self.source == "embedded":
            if len(self.select) < 2:
                raise ConfigError(f"model.select needs at least 2 checkpoint indices, got {list(self.select)}")
            if len(set(self.select)) != len(self.select):
                raise ConfigError(f"model.select repeats an index: {list(self.select)}")
        if self.pair is not None:
            self._pick_pair(self.pair)

    def _pick_pair(self, i: int) -> None:
        """``pair=i`` overrides ``select`` (embedded) or narrows ``checkpoints`` (local, hub) to i, i+1."""
        if self.source == "embedded":
            object.__setattr__(self, "select", (i, i + 1))
            return
        if i + 1 >= len(self.checkpoints):
            raise ConfigError(
                f"model.pair={i} needs checkpoints {i} and {i + 1}, but model.checkpoints has {len(self.checkpoints)} "
                f"(pairs 0..{max(len(self.checkpoints) - 2, 0)})"
            )
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints[i : i + 2]))


_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: Any, key: str) -> int:
    """``"2GB"``, ``"500MiB"`` or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
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


def _size(value: int | str) -> int | str:
    parse_size(value, "merge.shard_size")
    return value


@section("merge")
class MergeConfig:
    """How checkpoints are combined; ``weights`` and ``output_dir`` serve ``action=merge``."""

    method: Text = "linear"
    weights: tuple[Number, ...] | None = None
    output_dir: Text | None = None
    overwrite: bool = False
    # the size of one written shard, as given ("2GB", "500MiB" or bytes); shard_bytes is it parsed
    shard_size: Annotated[int | str, AfterValidator(_size)] = "2GB"
    dtype: Dtype = "auto"
    # action=merge only: write a merge of checkpoints holding NaN/Inf instead of refusing them.
    allow_nonfinite: bool = False
    # action=merge only: a mergekit YAML (linear) giving the checkpoints, weights and dtype instead.
    mergekit_config: Text | None = None
    # action=merge only: hf (a transformers folder) or dcp (a PyTorch Distributed Checkpoint under the
    # newest input's own tensor names, for a training job to continue from).
    output_format: Literal["hf", "dcp"] = "hf"
    # The rest of merge.*: merge.method's settings (conf/merge/<method>.yaml), checked against the method's
    # declared settings class in the registry step.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weights is not None:
            check_weights(self.weights, "merge.weights")

    @property
    def shard_bytes(self) -> int:
        return parse_size(self.shard_size, "merge.shard_size")


@section("search.space")
class SpaceConfig:
    """``search/space``: which weightings of the checkpoints the search explores (see search/space.py).

    ``last``: how many of the newest checkpoints the space covers (the pair: exactly 2). The rest of
    the space's YAML is its own settings, checked against the space's declared settings class.
    """

    name: Text = "pair"
    last: int = key(2, "an integer >= 2", ge=2)
    warm_start: bool = True  # spaces other than the pair begin with the cheap baselines' weightings
    settings: Mapping[str, Any] = field(default_factory=dict)


@section("search")
class SearchConfig:
    """The search over λ ∈ [alpha, 1]: ``budget`` counts every evaluation, initial points included."""

    kind: Text = "bo"
    space: SpaceConfig = field(default_factory=SpaceConfig)
    budget: int = key(10, "an integer >= 2 (λ=alpha and λ=1 come first)", ge=2)
    alpha: Number = key(0.0, "in [0, 1)", ge=0.0, lt=1.0)
    # skopt, numpy and torch all take this seed; numpy accepts only [0, 2**32).
    seed: int = key(0, "an integer in [0, 2**32)", ge=0, lt=2**32)
    acq_func: Literal["gp_hedge", "EI", "PI", "LCB"] = "gp_hedge"
    # Two λ closer than this count as the same point; the search never evaluates a point twice.
    min_distance: Number = key(1e-3, "in (0, 0.5)", gt=0.0, lt=0.5)
    # auto: continue the newest unfinished search with the same resume key (same command again);
    # never: always start afresh; or an MLflow run id to continue that search.
    resume: NonEmptyText = key("auto", "auto, never or an MLflow run id")
    # Which evaluated point is the result: the best of the GP's posterior mean over the evaluated points
    # (robust to a lucky draw of the noise), or the best single observation.
    select: Literal["posterior_mean", "observed"] = "posterior_mean"
    # converged: a bo search ends once no point of the space is expected to beat the incumbent by more
    # than stop_margin of its paired standard errors, patience proposals in a row (budget stays the cap);
    # budget: always spend the whole budget; auto: converged, except in a space whose converged stop was
    # measured to lose the pick (window), which spends its budget (docs/search-spaces.md)
    stop: Literal["auto", "converged", "budget"] = "auto"
    stop_margin: Number = key(1.0, "a number in [0, 10] (paired standard errors)", ge=0.0, le=10.0)
    patience: int = key(2, "an integer >= 1", ge=1)

    def __post_init__(self) -> None:
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


@section("eval.race")
class RaceConfig:
    """Racing (evaluation/racing.py): a trial scores its dev documents in ``chunks`` (a seeded order, the
    same chunks for every trial of a search) and stops as soon as a paired one-sided bootstrap says it is
    worse than the incumbent at level ``confidence``. ``eval.race=true|false`` on the command line sets
    ``enabled``."""

    enabled: bool = False
    chunks: int = key(4, "an integer >= 2", ge=2)
    confidence: Number = key(0.99, "in (0.5, 1)", gt=0.5, lt=1.0)


@section("eval")
class EvalConfig:
    """lm-eval tasks: ``tasks`` form the objective (dev), ``test_tasks`` are reported only.

    ``metrics`` maps a task to the metric that enters the objective (default: the task's first
    metric); ``weights`` maps a task to its weight in the objective (default 1).
    """

    tasks: tuple[Text, ...] = ()
    test_tasks: tuple[Text, ...] = ()
    include_path: Text | None = None
    limit: int | None = key(None, "a positive integer or null", ge=1)
    metrics: Mapping[str, Text] = field(default_factory=dict)
    weights: Mapping[str, Annotated[Number, key(expect="a number >= 0 (0: tracked, not optimised)", ge=0)]] = field(
        default_factory=dict
    )
    batch_size: int = key(16, "a positive integer", ge=1)
    max_length: int | None = key(None, "an integer >= 8 or null", ge=8)
    allow_test_split: bool = False
    # Every gain is a paired bootstrap over documents with `bootstrap` resamples and an interval at
    # `confidence`.
    confidence: Number = key(0.95, "in [0.5, 1)", ge=0.5, lt=1.0)
    bootstrap: int = key(1000, "an integer in [100, 100000]", ge=100, le=100_000)
    race: RaceConfig = field(default_factory=RaceConfig)

    def __post_init__(self) -> None:
        for name, tasks in (("eval.tasks", self.tasks), ("eval.test_tasks", self.test_tasks)):
            for i, t in enumerate(tasks):
                if not t.strip():
                    raise ConfigError(f"{name}[{i}] must be a task name, got {t!r}")
            if len(set(tasks)) != len(tasks):
                raise ConfigError(f"{name} lists a task twice: {list(tasks)}")
        # Which tasks metrics/weights may name is checked against the effective dev tasks when the
        # objective is built (the model may supply them).
        if self.weights and not any(w > 0 for w in self.weights.values()) and set(self.weights) >= set(self.tasks):
            raise ConfigError("eval.weights gives every dev task weight 0; nothing would be optimised")


@section("tracking")
class TrackingConfig:
    """MLflow tracking. ``uri`` None means a sqlite file ``mlflow.db`` in the working directory."""

    uri: Text | None = None
    experiment: NonEmptyText = key("ckptmerge", "a non-empty name")
    artifact_location: Text | None = None
    log_plots: bool = True


@section("registry")
class RegistryConfig:
    """MLflow model registry: the best merge becomes a new version of ``name`` with ``alias``."""

    # conf/ writes it as ckptmerge-${model.name}; this default is that name for the embedded model
    name: Text = "ckptmerge-embedded"
    enabled: bool = True
    alias: Text = key("candidate", "a name of letters, digits, '_' and '-'", pattern=NAME_PATTERN)
    # The written merge is reloaded and re-scored; it must match the search's objective within this
    # relative tolerance (fp32 math is bitwise identical; a half-precision output dtype rounds).
    rescore_tolerance: Number = key(1e-3, "in [0, 1)", ge=0.0, lt=1.0)
    # action=promote: `champion_alias` moves to the `alias` version only when its test score (the
    # objective over the test tasks, higher is better) beats the champion's by more than `promote_margin`
    # with significance: the lower bound of the paired interval (eval.confidence) is above the margin.
    champion_alias: Text = key("champion", "a name of letters, digits, '_' and '-'", pattern=NAME_PATTERN)
    promote_margin: Number = key(0.0, "a number >= 0", ge=0.0)
    # ...and no test task's scored metric is significantly worse (its interval below 0), unless this is
    # true: a trade-off between tasks the weights allow is then accepted.
    allow_task_regression: bool = False
    # A search registers its merge only when the dev gain over the newest checkpoint is significant
    # (its interval at eval.confidence excludes 0); false registers anyway, tagged as not significant.
    require_significant_gain: bool = True

    def __post_init__(self) -> None:
        if self.enabled:
            check_registry_name(self.name)
        if self.alias == self.champion_alias:
            raise ConfigError(f"registry.champion_alias must differ from registry.alias (both {self.alias!r})")


@section("runtime")
class RuntimeConfig:
    """Where the resident model lives and in which dtype."""

    name: Text = "cpu"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    dtype: Dtype = "auto"
    threads: int | None = key(None, "a positive integer or null", ge=1)
    # ``deepspeed``: the resident model is partitioned over the ranks of the ``deepspeed`` launcher
    # (ZeRO stage 3); rank 0 searches and tracks, every rank merges its own partition and evaluates
    # its share of the requests.
    # ``ray``: trials run in parallel, one whole resident model per Ray actor (docs/parallel.md).
    backend: Literal["single", "deepspeed", "ray"] = "single"
    deepspeed_config: Text | None = None  # a DeepSpeed JSON whose keys override ours (e.g. offload)
    timeout_s: int = key(1800, "a positive number of seconds", ge=1)  # a collective waiting longer fails the run
    # runtime=ray: how many workers (null: one per visible GPU on CUDA, 2 on the CPU) and where Ray runs:
    # empty starts a local instance (stopped at exit); ``auto`` or ``HOST:PORT`` or ``ray://HOST:PORT``
    # joins a running cluster (``ray start --head``).
    workers: int | None = key(None, "a positive integer or null", ge=1)
    address: Text = ""

    def __post_init__(self) -> None:
        if self.backend == "ray" and self.deepspeed_config:
            raise ConfigError(
                "runtime.deepspeed_config partitions one model over DeepSpeed ranks (ZeRO); runtime=ray runs "
                "a whole model per worker: use one or the other"
            )
        if self.backend != "ray" and (self.workers is not None or self.address):
            which = "runtime.workers" if self.workers is not None else "runtime.address"
            raise ConfigError(f"{which} is read by runtime=ray only (runtime={self.name} runs no Ray workers)")


@section("pilot")
class PilotConfig:
    """``action=pilot``: every checkpoint alone and every pair merged at ``lambda``."""

    lam: Number = key(0.5, "in [0, 1]", ge=0.0, le=1.0)


@section("compare")
class CompareConfig:
    """``action=compare``: merge methods run on the same checkpoints, dev objective and budget."""

    # every registered baseline, then our searches (see compare_methods); null in the YAML means the same
    methods: tuple[Text, ...] = field(default_factory=compare_methods)
    last: int = key(4, "an integer >= 2", ge=2)  # multi-checkpoint methods use the last N checkpoints
    # Each method's settings over its defaults (conf/merge/<method>.yaml), e.g. {fisher: {floor: 1e-6}}
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    calibration_path: Text | None = None  # JSONL with "text"; the embedded trajectory brings its own
    register: bool = False

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("compare.methods is empty")

    def method_settings(self, name: str) -> Any:
        """The settings of merge method ``name`` in this comparison: its defaults, then compare.settings.NAME."""
        from ckptmerge.merge.registry import make_settings, settings_of

        return make_settings(settings_of(name), name, self.settings.get(name, {}), f"compare.settings.{name}")


@section("watch")
class WatchConfig:
    """``action=watch``: search each new adjacent pair of checkpoints a trainer writes into ``dir``."""

    dir: NonEmptyText | None = key(None, "a folder path")
    poll_s: Number = key(30, "a number of seconds > 0", gt=0)
    # exit 0 after this long with nothing new (no new checkpoint, no pending one changing); null: until stopped
    idle_exit_s: Number | None = key(None, "a number of seconds >= 0 or null", ge=0)
    # a checkpoint without a trainer's completion marker is used once its files are unchanged this long
    settle_s: Number = key(10, "a number of seconds >= 0", ge=0)
    # run action=promote's policy after each registered candidate
    promote: bool = False
    # each pair's search also starts from the point the previous pair's search chose (ckptmerge.watch.warm)
    warm_start: bool = True


@section()
class Config:
    """The whole run: one action over one set of checkpoints (validated as a whole by :func:`config_from_dict`)."""

    action: Text = "search"
    # modules imported before the config is checked: merge methods, spaces, searchers or actions of your own
    plugins: tuple[Text, ...] = ()
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

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), e.g. for logging the resolved config; it reads back
        through :func:`config_from_dict` (the search space's settings in its YAML's form, flat)."""
        import dataclasses

        out = _plain(dataclasses.asdict(self))
        out["merge"] = {**{k: v for k, v in out["merge"].items() if k != "settings"}, **out["merge"]["settings"]}
        if not self.plugins:  # the dict hashes into resume keys (action=watch): unchanged when there are none
            del out["plugins"]
        space = out["search"]["space"]
        out["search"]["space"] = {**{k: v for k, v in space.items() if k != "settings"}, **space.get("settings", {})}
        return out


SECTIONS: dict[str, type] = {
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


def known_keys(path: str) -> list[str]:
    """The keys a section takes (``""``: the top level), for "did you mean" on the command line; a merge
    method's or a space's settings count as keys of ``merge`` / ``search.space``."""
    import dataclasses

    from ckptmerge.merge.registry import METHODS, settings_of
    from ckptmerge.search import SPACES
    from ckptmerge.search.space_settings import space_settings_of

    nested = {"model.trajectory": TrajectoryConfig, "search.space": SpaceConfig, "eval.race": RaceConfig, **SECTIONS}
    if not path:
        return [*SECTIONS, "action", "plugins"]
    cls = nested.get(path)
    if cls is None:
        return []
    keys = {f.name for f in dataclasses.fields(cls) if f.name != "settings"}
    if cls is MergeConfig:
        keys |= {f.name for m in METHODS for f in dataclasses.fields(settings_of(m))}
    if cls is SpaceConfig:
        keys |= {f.name for s in SPACES for f in dataclasses.fields(space_settings_of(s))}
    return sorted(keys)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def check_weights(weights: Any, key: str, allow_negative: bool = False) -> None:
    """Merge weights: at least two finite numbers summing to 1 (non-negative unless allowed)."""
    if len(weights) < 2:
        raise ConfigError(f"{key} needs at least 2 weights, got {list(weights)}")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(float(w)):
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


# compare.* keys that became a merge method's settings, for a one-line hint instead of "unknown key"
MOVED_COMPARE_KEYS = {
    "lawa_k": "lawa.k",
    "ema_beta": "ema.beta",
    "fisher_tokens": "fisher.tokens",
    "fisher_floor": "fisher.floor",
    "regmean_alpha": "regmean.alpha",
    "gram_tokens": "regmean.tokens",
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


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate a plain nested dict (as Hydra composes it) into a :class:`Config`: the one validation step
    (plugins, schema, the action's rules, registry names; see the module docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"the configuration must be a mapping, got {type(data).__name__}")
    plugins = load_plugins(data.get("plugins") or ())  # before the registries are read
    kwargs: dict[str, Any] = {"plugins": plugins}
    for name, value in data.items():
        if name in SECTIONS:
            kwargs[name] = _section(SECTIONS[name], value or {}, name)
        elif name == "action":
            kwargs[name] = value
        elif name in ("plugins", "hydra"):
            continue
        else:
            raise ConfigError(f"unknown config key {name}{did_you_mean(name, list(SECTIONS) + ['action', 'plugins'])}")
    if not isinstance(kwargs.get("action", "search"), str):
        raise ConfigError(f"action must be a name such as search or merge, got {kwargs['action']!r}")
    cfg = Config(**kwargs)
    check_action(cfg)
    check_names(cfg)
    return cfg


def _section(cls: type, data: Any, prefix: str) -> Any:
    """Construct section ``cls`` from ``data``: unknown keys name the nearest known one, lists become
    tuples, nested sections are built with their own prefix; types and ranges are the schema's."""
    import dataclasses

    if cls is RaceConfig and isinstance(data, bool):  # eval.race=true: the switch alone
        data = {"enabled": data}
    if cls is SpaceConfig and isinstance(data, str):  # search.space=ema where search/space=ema was meant
        data = {"name": data}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix} must be a mapping, got {data!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    if cls in (MergeConfig, SpaceConfig):  # the keys beside the common ones are the method's / space's settings
        data = {
            **{k: v for k, v in data.items() if k in fields and k != "settings"},
            "settings": {k: v for k, v in data.items() if k not in fields or k == "settings"},
        }
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if cls is CompareConfig and (hint := moved_compare_key(name)):
            raise ConfigError(hint)
        if name not in fields:
            raise ConfigError(f"unknown config key {prefix}.{name}{did_you_mean(name, fields)}")
        if cls is ModelConfig and name == "trajectory":
            value = _section(TrajectoryConfig, value or {}, f"{prefix}.trajectory")
        elif cls is EvalConfig and name == "race":
            value = _section(RaceConfig, value if value is not None else {}, f"{prefix}.race")
        elif cls is SearchConfig and name == "space":
            value = _section(SpaceConfig, value if value is not None else {}, f"{prefix}.space")
        elif value is None and cls in (EvalConfig, ModelConfig) and name in ("metrics", "weights", "dev_weights"):
            value = {}
        elif value is None and cls is CompareConfig and name == "methods":  # null: the default list
            continue
        kwargs[name] = _tuples(value)
    return cls(**kwargs)


def _tuples(value: Any) -> Any:
    """Lists (Hydra's) as tuples, at any depth below a key: the sections are frozen."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    return value
