"""Config validation: every bad value is refused with an error that names the key."""

from __future__ import annotations

import dataclasses

import pytest

from ckptmerge.config import Config, EvalConfig, MergeConfig, check_weights, config_from_dict, parse_size
from ckptmerge.errors import ConfigError


def test_defaults_are_valid():
    cfg = Config()
    assert cfg.action == "search"
    assert cfg.search.budget >= 2 and 0 <= cfg.search.alpha < 1
    assert cfg.to_dict()["model"]["select"] == [-2, -1]


@pytest.mark.parametrize(
    "section, values, key",
    [
        ("search", {"budget": 1}, "search.budget"),
        ("search", {"budget": 2.5}, "search.budget"),
        ("search", {"alpha": 1.0}, "search.alpha"),
        ("search", {"alpha": -0.1}, "search.alpha"),
        ("search", {"kind": "bayes"}, "search.kind"),
        ("search", {"budget": 5000}, "search.budget"),
        ("eval", {"limit": 0}, "eval.limit"),
        ("eval", {"tasks": ["a", "a"]}, "eval.tasks"),
        ("eval", {"tasks": ["a"], "weights": {"a": -1}}, "eval.weights.a"),
        ("eval", {"tasks": ["a"], "weights": {"a": 0}}, "eval.weights"),
        ("merge", {"weights": [0.5, 0.6]}, "merge.weights"),
        ("merge", {"weights": [1.5, -0.5]}, "merge.weights[1]"),
        ("merge", {"shard_size": "lots"}, "merge.shard_size"),
        ("model", {"source": "local", "checkpoints": ["a"]}, "model.checkpoints"),
        ("model", {"source": "ftp"}, "model.source"),
        ("registry", {"name": "bad/name"}, "registry.name"),
        ("runtime", {"device": "tpu"}, "runtime.device"),
    ],
)
def test_bad_values_name_their_key(section, values, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict({section: values})
    assert key in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"search\.budgt.*did you mean 'budget'"):
        config_from_dict({"search": {"budgt": 3}})


def test_unknown_kind_suggests():
    # registry names are the validation step's last stage (a section alone checks types and ranges)
    with pytest.raises(ConfigError, match="did you mean 'grid'"):
        config_from_dict({"search": {"kind": "gird"}})


def test_lists_become_tuples_and_dicts_survive():
    cfg = config_from_dict({"eval": {"tasks": ["t1", "t2"], "weights": {"t1": 2}, "metrics": None}})
    assert cfg.eval.tasks == ("t1", "t2")
    assert cfg.eval.weights == {"t1": 2}
    assert cfg.eval.metrics == {}


def test_merge_action_needs_weights_and_output():
    with pytest.raises(ConfigError, match="merge.weights"):
        config_from_dict({"action": "merge"})
    with pytest.raises(ConfigError, match="merge.output_dir"):
        config_from_dict({"action": "merge", "merge": {"weights": [0.5, 0.5]}})


def test_weights_and_sizes():
    check_weights([0.25, 0.75], "w")
    with pytest.raises(ConfigError, match="sum to 1"):
        check_weights([0.2, 0.2], "w")
    with pytest.raises(ConfigError, match="at least 2"):
        check_weights([1.0], "w")
    assert parse_size("2GB", "k") == 2 * 10**9
    assert parse_size("500MiB", "k") == 500 * 2**20
    assert parse_size(1234, "k") == 1234


def test_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.search.budget = 3  # type: ignore[misc]
    assert MergeConfig().method == "linear" and EvalConfig().batch_size > 0
