"""The config keys operations added: model.pair, registry.champion_alias / promote_margin, and how
action=promote finds the test tasks of a candidate."""

from __future__ import annotations

import pytest

from ckptmerge.config import Config, ModelConfig, RegistryConfig, config_from_dict
from ckptmerge.errors import ConfigError


def test_pair_overrides_select_of_the_embedded_trajectory():
    m = ModelConfig(pair=2)
    assert m.select == (2, 3) and m.pair == 2
    assert ModelConfig().select == (-2, -1)


def test_pair_narrows_a_list_of_checkpoints():
    m = ModelConfig(name="local", source="local", checkpoints=("/a", "/b", "/c", "/d"), pair=1)
    assert m.checkpoints == ("/b", "/c")
    with pytest.raises(ConfigError, match=r"model.pair=3 needs checkpoints 3 and 4, but model.checkpoints has 4"):
        ModelConfig(name="local", source="local", checkpoints=("/a", "/b", "/c", "/d"), pair=3)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_pair_must_be_a_non_negative_integer(bad):
    with pytest.raises(ConfigError, match="model.pair must be an integer >= 0"):
        ModelConfig(pair=bad)


def test_pair_out_of_range_of_the_trajectory_names_the_key(tiny_trajectory, traj_cache):
    from ckptmerge.session.setup import resolve_sources

    cfg = config_from_dict(
        {
            "model": {
                "pair": len(tiny_trajectory.checkpoints) - 1,
                "trajectory": {"preset": "tiny", "cache_dir": str(traj_cache)},
            }
        }
    )
    with pytest.raises(ConfigError, match=r"model.pair=2 is out of range: the embedded trajectory has 3 checkpoints"):
        resolve_sources(cfg.model, cfg.eval, progress=False)


def test_registry_promotion_keys_are_validated():
    r = RegistryConfig()
    assert (r.alias, r.champion_alias, r.promote_margin) == ("candidate", "champion", 0.0)
    with pytest.raises(ConfigError, match="registry.promote_margin must be a number >= 0"):
        RegistryConfig(promote_margin=-0.1)
    with pytest.raises(ConfigError, match="registry.promote_margin"):
        RegistryConfig(promote_margin=float("nan"))
    with pytest.raises(ConfigError, match="registry.champion_alias must differ from registry.alias"):
        RegistryConfig(champion_alias="candidate")
    with pytest.raises(ConfigError, match="registry.champion_alias must be a name"):
        RegistryConfig(champion_alias="champ ion")


def test_promotion_takes_the_test_tasks_of_the_candidates_search(tiny_trajectory, traj_cache):
    """Embedded source: its trajectory's test tasks and task folder; eval.test_tasks wins when given."""
    from ckptmerge.actions.promote import promotion_tasks

    source = config_from_dict(
        {"model": {"trajectory": {"preset": "tiny", "cache_dir": str(traj_cache)}}, "eval": {"limit": 7}}
    )
    tasks = promotion_tasks(Config(action="promote"), source, {})
    assert tasks.names == tuple(tiny_trajectory.test_tasks)
    assert str(tiny_trajectory.tasks_dir) in tasks.include_paths
    assert tasks.limit == 7 and tasks.max_length == tiny_trajectory.max_length
    chosen = config_from_dict({"action": "promote", "eval": {"test_tasks": ["ckptmerge_test_ood_bpb"], "limit": 3}})
    tasks = promotion_tasks(chosen, source, {})
    assert tasks.names == ("ckptmerge_test_ood_bpb",) and tasks.limit == 3
    # A version without a logged config: the tasks its result.json reported.
    tasks = promotion_tasks(Config(action="promote"), None, {"test_metrics": {"wikitext/bits_per_byte": 1.0}})
    assert tasks.names == ("wikitext",)
    with pytest.raises(ConfigError, match="found no test tasks"):
        promotion_tasks(Config(action="promote"), None, {})
