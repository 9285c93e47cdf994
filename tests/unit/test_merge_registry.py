"""The merge-method registry: each method's declaration, its settings and their YAML, and the config
validation and compare method list that read it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from ckptmerge.config import CompareConfig, ConfigError, MergeConfig, compare_methods, config_from_dict
from ckptmerge.merge import METHODS, baseline_names, get_method, method, register, searchable, settings_of
from ckptmerge.merge.soups import greedy_weights

CONF_MERGE = Path(__file__).resolve().parents[2] / "conf" / "merge"


def test_the_built_in_methods_declare_what_they_need():
    forms = {n: (method(n).form, method(n).needs, method(n).in_place) for n in METHODS}
    assert forms["linear"] == ("per-tensor", "weights", True)
    for n in ("newest", "uniform", "lawa", "ema", "greedy"):
        assert forms[n] == ("weighting", "weights", False), n
    for n in ("fisher", "regmean"):
        assert forms[n] == ("calibration", "calibration", False), n
    assert baseline_names() == ["newest", "uniform", "lawa", "ema", "greedy", "fisher", "regmean"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_with_settings_has_its_yaml_which_takes_them_from_the_schema(name):
    """Defaults in one place: a method's YAML pulls its settings' defaults from the schema, restating none."""
    m = method(name)
    if not m.has_settings:
        return
    data = yaml.safe_load((CONF_MERGE / f"{name}.yaml").read_text())
    assert data["method"] == name
    assert any(str(d).startswith(f"/schema/merge_settings/{name}@_here_") for d in data["defaults"])
    shared = {f.name for f in dataclasses.fields(MergeConfig)}
    assert not {k for k in data if k not in shared and k != "defaults"}, "a setting's default restated in YAML"
    assert dataclasses.asdict(m.settings()) == dataclasses.asdict(settings_of(name)())


@pytest.mark.parametrize("path", sorted(CONF_MERGE.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_merge_yaml_is_a_registered_method(path):
    data = yaml.safe_load(path.read_text())
    assert data["method"] == path.stem and path.stem in METHODS


def test_a_search_runs_only_methods_with_an_in_place_form():
    assert searchable("linear").fn is not None
    for name in ("ema", "greedy"):
        with pytest.raises(ConfigError, match=f"merge.method={name} makes its own weights"):
            searchable(name)
    with pytest.raises(ConfigError, match="calibration method"):
        searchable("fisher")
    with pytest.raises(ConfigError, match="merge.method=ema makes its own weights .* run it in action=compare"):
        get_method("ema")  # action=merge writes a function of tensors and weights


def test_a_per_tensor_method_receives_its_settings():
    @dataclasses.dataclass(frozen=True)
    class Scale:
        factor: float = 1.0

    def scaled_newest(tensors, weights, out_dtype, settings):
        return tensors[-1] * settings.factor

    register("scaled_newest", scaled_newest, settings=Scale)
    try:
        ts = [torch.ones(3), torch.full((3,), 2.0)]
        assert get_method("scaled_newest")(ts, [0.5, 0.5], None).tolist() == [2.0, 2.0, 2.0]
        assert get_method("scaled_newest", {"factor": 3.0})(ts, [0.5, 0.5], None).tolist() == [6.0, 6.0, 6.0]
        assert config_from_dict({"merge": {"method": "scaled_newest", "factor": 3.0}}).merge.settings == {"factor": 3.0}
        with pytest.raises(ConfigError, match="unknown config key merge.factr for merge method scaled_newest"):
            config_from_dict({"merge": {"method": "scaled_newest", "factr": 3.0}})
    finally:
        METHODS.unregister("scaled_newest")


def test_registration_checks_the_declaration():
    with pytest.raises(ValueError, match="exactly one of"):
        register("both", lambda t, w, d: t[0], weighting=lambda k, s, e: [1.0] * k)
    with pytest.raises(ValueError, match="needs must be one of"):
        register("odd", lambda t, w, d: t[0], needs="gradients")
    with pytest.raises(ValueError, match="registered twice"):
        register("linear", lambda t, w, d: t[0])
    assert "both" not in METHODS and "odd" not in METHODS


def test_compare_lists_every_registered_baseline_then_the_searches():
    default = compare_methods()
    assert default[:7] == tuple(baseline_names())
    assert {"bo", "bo_simplex", "bo_ema", "bo_window", "bo_decay", "grid", "random"} <= set(default[7:])
    assert CompareConfig().methods == default
    register("oldest", weighting=lambda k, s, evaluate: [1.0] + [0.0] * (k - 1), baseline=True)
    try:
        assert "oldest" in compare_methods() and "oldest" in CompareConfig().methods
        assert CompareConfig(methods=("oldest", "bo")).methods == ("oldest", "bo")
    finally:
        METHODS.unregister("oldest")
    with pytest.raises(ConfigError, match="unknown method 'oldest'"):  # names: the validation step's last stage
        config_from_dict({"compare": {"methods": ["oldest"]}})


def test_compare_settings_override_a_method_s_defaults_and_name_their_key():
    c = config_from_dict({"compare": {"settings": {"fisher": {"floor": 1e-6}, "lawa": {"k": 2}}}}).compare
    assert c.method_settings("fisher").floor == 1e-6 and c.method_settings("fisher").tokens == 8192
    assert c.method_settings("lawa").k == 2 and c.method_settings("ema").beta == 0.5
    assert config_from_dict({"compare": {"methods": None}}).compare.methods == compare_methods()
    cases = [
        ({"fisher": {"floor": 0}}, "compare.settings.fisher.floor must be > 0"),
        ({"fisher": {"flor": 1}}, "unknown config key compare.settings.fisher.flor for merge method fisher"),
        ({"ema": {"beta": 1.0}}, r"compare.settings.ema.beta must be in \[0, 1\)"),
        ({"fishr": {"floor": 1}}, "compare.settings.fishr: not a known merge method .did you mean 'fisher'"),
        ({"lawa": 3}, "compare.settings.lawa must be a mapping"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"compare": {"settings": settings}})


def test_a_moved_compare_key_says_where_it_went():
    with pytest.raises(ConfigError, match=r"compare.fisher_floor is now .*\+compare.settings.fisher.floor=VALUE"):
        config_from_dict({"compare": {"fisher_floor": 1e-6}})


def test_merge_keys_beside_the_common_ones_are_the_method_s_settings():
    cfg = config_from_dict({"merge": {"method": "regmean", "alpha": 0.5}})
    assert cfg.merge.settings == {"alpha": 0.5}
    assert cfg.to_dict()["merge"]["alpha"] == 0.5
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config key merge.overwrit for merge method linear.*'overwrite'"):
        config_from_dict({"merge": {"overwrit": True}})
    with pytest.raises(ConfigError, match="merge.alpha must be in"):
        config_from_dict({"merge": {"method": "regmean", "alpha": 2}})


def test_a_plugin_module_registers_its_method_before_the_config_is_checked(tmp_path, monkeypatch):
    (tmp_path / "plugin_halves.py").write_text(
        "from ckptmerge.merge import register\n"
        "register('halves', lambda tensors, weights, out_dtype: (tensors[0] + tensors[-1]) / 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        cfg = config_from_dict({"plugins": ["plugin_halves"], "merge": {"method": "halves"}})
        assert cfg.plugins == ("plugin_halves",) and searchable("halves").fn is not None
        assert config_from_dict(cfg.to_dict()) == cfg
        # without plugins the dict (a watch's resume key hashes it) has the keys it had before plugins existed
        assert "plugins" not in config_from_dict({}).to_dict()
    finally:
        METHODS.unregister("halves")
    with pytest.raises(ConfigError, match=r"plugins\[0\] must be a module name"):
        config_from_dict({"plugins": ["a/b.py"]})


def test_greedy_soup_adds_a_checkpoint_only_when_the_soup_improves():
    target = [0.5, 0.0, 0.5]  # the best soup: the first and the last checkpoint

    def evaluate(weights: list[float]) -> float:
        return -sum((w - t) ** 2 for w, t in zip(weights, target))

    assert greedy_weights(3, evaluate) == [0.5, 0.0, 0.5]
    assert greedy_weights(3, lambda w: w[1]) == [0.0, 1.0, 0.0]  # nothing beats the second alone
