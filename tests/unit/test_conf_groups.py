"""Every option of every config group composes and validates into a typed Config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ckptmerge.cli import store_schema
from ckptmerge.config import Config, config_from_dict

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def _compose(overrides):
    store_schema()  # the schema's defaults (the group schema/*), as the app registers them before composing
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return config_from_dict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def test_groups_are_the_documented_ones():
    assert {"model", "merge", "search", "eval", "tracking", "registry", "runtime"} <= set(GROUPS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("model", "local"):
        overrides.append("model.checkpoints=[/a,/b]")
        overrides.append("eval.tasks=[t]")
    cfg = _compose(overrides)
    assert isinstance(cfg, Config)
    if group == "search":
        assert cfg.search.kind == option
    if group == "model":
        assert cfg.model.name == option
        assert cfg.registry.name == f"ckptmerge-{option}"
        if option.startswith("pythia"):
            assert all(c.startswith(f"EleutherAI/{option}@step") for c in cfg.model.checkpoints)
            assert not cfg.model.trust_remote_code
        if option == "baichuan2":
            assert cfg.model.trust_remote_code  # only ever on because this config says so


def test_contract_overrides():
    cfg = _compose(
        [
            "search.budget=8",
            "search.alpha=0.3",
            "search.seed=5",
            "tracking.uri=sqlite:///x.db",
            "tracking.experiment=e",
            "registry.name=R",
            "eval.tasks=[a,b]",
            "eval.test_tasks=[c]",
            "eval.limit=3",
            "eval.include_path=/tmp",
        ]
    )
    assert (cfg.search.budget, cfg.search.alpha, cfg.search.seed) == (8, 0.3, 5)
    assert cfg.tracking.uri == "sqlite:///x.db" and cfg.registry.name == "R"
    assert cfg.eval.tasks == ("a", "b") and cfg.eval.test_tasks == ("c",) and cfg.eval.limit == 3
    cfg = _compose(["eval.metrics={a: acc}", "eval.weights={a: 2.0}", "eval.tasks=[a]"])
    assert cfg.eval.metrics == {"a": "acc"} and cfg.eval.weights == {"a": 2.0}


def test_local_without_checkpoints_is_refused():
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue):
        _compose(["model=local"])


# keys that say which preset a file is, restated on purpose (runtime=cpu is named cpu, model=embedded embedded)
IDENTITY = {"name", "kind", "method", "source"}


PRESETS = OPTIONS + [("search/space", f.stem) for f in sorted((CONF / "search" / "space").glob("*.yaml"))]


@pytest.mark.parametrize("group, option", PRESETS, ids=[f"{g}={o}" for g, o in PRESETS])
def test_no_preset_restates_a_default_of_the_schema(group, option):
    """Every default is written once, in the schema: a preset lists only what it changes."""
    import yaml

    from ckptmerge.config_defaults import defaults_tree

    tree = defaults_tree()
    node = "space" if group == "search/space" else group
    defaults = dict(tree[node])
    for key, value in tree.items():
        if key.startswith(("merge_settings/", "space_settings/")) and key.endswith(f"/{option}"):
            defaults.update(value)
    data = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    restated = {k for k, v in data.items() if k not in IDENTITY and k in defaults and v == defaults[k]}
    assert not restated, f"conf/{group}/{option}.yaml restates the schema's default of {sorted(restated)}"
