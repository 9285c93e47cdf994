"""Search spaces (search/space): the map from a point to weights, the warm start, the registry, the config."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ckptmerge.config import SearchConfig, config_from_dict, searched_method
from ckptmerge.errors import ConfigError
from ckptmerge.merge.soups import baseline_weightings, ema_weights, lawa_weights, uniform_weights
from ckptmerge.search.searchers import make_searcher, warm_start
from ckptmerge.search.space import SPACES, SearchSpace, make_space

FAMILIES = ("simplex", "ema", "window", "decay")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_point_of_a_space_is_a_weighting(name, k):
    sp = make_space(name, k, 0.0)
    lo, hi = np.array(sp.bounds()).T
    rng = np.random.default_rng(k)
    for u in [lo, hi, *rng.uniform(lo, hi, size=(50, len(lo)))]:
        w = sp.weights(list(u))
        assert len(w) == k and min(w) >= 0 and sum(w) == pytest.approx(1)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_space_reaches_the_newest_checkpoint_alone_exactly(name):
    """The reference of every gain must be a point the search evaluates, not an approximation of it."""
    sp = make_space(name, 4, 0.0)
    point, dist = sp.point_of([0, 0, 0, 1])
    assert dist == 0 and sp.weights(point) == [0, 0, 0, 1]


def test_the_families_pass_through_the_baselines_they_are_named_after():
    ema, window, decay = (make_space(n, 4) for n in ("ema", "window", "decay"))
    assert ema.weights([0.5]) == pytest.approx(ema_weights(4, 0.5))
    assert window.weights([3.0]) == pytest.approx(lawa_weights(4, 3))
    assert window.weights([4.0]) == pytest.approx(uniform_weights(4))
    assert window.weights([2.5]) == pytest.approx([0, 0.5 / 2.5, 1 / 2.5, 1 / 2.5])  # between LAWA 2 and 3
    assert decay.bounds() == [(0.25, 1.0)]
    assert decay.weights([0.25]) == pytest.approx(uniform_weights(4))
    assert decay.weights([0.4]) == pytest.approx(np.array([1, 2, 3, 4]) / 10)  # linear decay with age
    # the coordinate is the newest's weight, and the others fall off with age
    for t in np.linspace(0.25, 1, 13):
        w = decay.weights([t])
        assert w[-1] == pytest.approx(t, abs=1e-9) and list(w) == sorted(w) and sum(w) == pytest.approx(1)


def test_the_simplex_inverts_stick_breaking_exactly():
    sp = make_space("simplex", 5, 0.1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.dirichlet(np.ones(5))
        w[-1] = max(w[-1], 0.1)
        w /= w.sum()
        if w[-1] < 0.1:
            continue
        point, dist = sp.point_of(list(w))
        assert dist < 1e-12 and sp.weights(point) == pytest.approx(w)


def test_warm_start_puts_the_newest_first_and_keeps_only_the_baselines_a_space_expresses():
    base = baseline_weightings(4, lawa_k=3, ema_beta=0.5)
    assert list(base) == ["newest", "uniform", "lawa", "ema"]
    labels = {name: [label for _, label in make_space(name, 4).warm_start(base, 1e-3)] for name in FAMILIES}
    assert labels["simplex"] == ["warm:newest", "warm:uniform", "warm:lawa", "warm:ema"]  # all exact
    assert labels["window"] == ["warm:newest", "warm:uniform", "warm:lawa"]
    assert labels["ema"] == ["warm:newest", "warm:ema"]
    assert labels["decay"] == ["warm:newest", "warm:uniform"]
    # the nearest point of a family to a baseline it cannot express is not that baseline: left to the GP
    ema = make_space("ema", 4)
    (beta,), dist = ema.point_of(base["uniform"])
    sweep = min(np.abs(np.array(ema.weights([b])) - base["uniform"]).max() for b in np.linspace(0, 0.95, 2001))
    assert dist <= sweep + 1e-9


def test_warm_start_drops_a_baseline_the_space_already_holds():
    """For two checkpoints uniform, LAWA and EMA(0.5) are the same weighting: evaluated once."""
    labels = [label for _, label in make_space("simplex", 2).warm_start(baseline_weightings(2, 3, 0.5), 1e-3)]
    assert labels == ["warm:newest", "warm:uniform"]


def test_a_warm_started_search_evaluates_the_baselines_before_the_model_proposes():
    sp = make_space("window", 4)
    initial = warm_start(sp, baseline_weightings(4, 3, 0.5), 1e-3)
    s = make_searcher(SearchConfig(kind="bo", budget=8, seed=0), sp, initial)
    f = lambda x: -abs(x[0] - 2.4)  # noqa: E731  - best between LAWA 2 and LAWA 3
    seen = []
    for _ in range(8):
        p = s.ask()
        seen.append(p)
        s.tell(p.x, f(p.x))
    assert [p.source for p in seen[:3]] == ["warm:newest", "warm:uniform", "warm:lawa"]
    assert all(not p.source.startswith("warm") for p in seen[3:])
    assert max(s.ys) > max(s.ys[:3])  # the model found better than every baseline's point
    assert abs(seen[int(np.argmax(s.ys))].x[0] - 2.4) < 0.1


def test_when_the_optimum_is_an_evaluated_corner_the_search_refines_near_it_not_at_the_far_end():
    """All acquisitions re-propose the newest checkpoint alone (β=0); the fallback used to be the least
    explored point, the far end of the box, where the model expects the worst."""
    sp = make_space("ema", 4)
    s = make_searcher(
        SearchConfig(kind="bo", budget=8, seed=0), sp, warm_start(sp, baseline_weightings(4, 3, 0.5), 1e-3)
    )
    fallback = []
    for _ in range(8):
        p = s.ask()
        s.tell(p.x, -(p.x[0] ** 2))
        if p.source == "UCB-new":
            fallback.append(p.x[0])
    # the acquisitions keep re-proposing β≈0 (within 5% of the box of it): each fallback point refines
    # on the optimum's side, a step of at least 5% of the box further on, never the far end
    assert len(fallback) >= 3 and all(b < 0.5 for b in fallback), s.xs
    assert len({round(b[0], 6) for b in s.xs}) == len(s.xs)  # never the same point twice


def test_grid_searches_any_one_coordinate_space_and_refuses_more():
    s = make_searcher(SearchConfig(kind="grid", budget=4), make_space("window", 4))
    xs = [s.ask().x[0] for _ in range(4)]
    assert sorted(xs) == pytest.approx([1, 2, 3, 4])
    with pytest.raises(ConfigError, match="search.kind=grid needs a space with one coordinate"):
        make_searcher(SearchConfig(kind="grid", budget=4), make_space("simplex", 4))


def test_the_pair_is_two_checkpoints_and_says_what_to_use_for_more():
    with pytest.raises(ConfigError, match="search/space=pair merges 2 checkpoints, 3 are given.*simplex"):
        make_space("pair", 3)


def _cfg(**space):
    return config_from_dict({"search": {"space": space}})


def test_space_config_errors_name_the_key():
    assert _cfg(name="ema", last=4, beta_max=0.9).search.space.settings == {"beta_max": 0.9}
    with pytest.raises(ConfigError, match=r"search.space='emma' is not a known search space \(did you mean 'ema'\?\)"):
        _cfg(name="emma")
    with pytest.raises(
        ConfigError, match=r"unknown config key search.space.beta for search space ema \(did you mean 'beta_max'\?\)"
    ):
        _cfg(name="ema", beta=0.3)
    with pytest.raises(ConfigError, match=r"search.space.beta_max must be in \(0, 1\), got 1.5"):
        _cfg(name="ema", beta_max=1.5)
    with pytest.raises(ConfigError, match="search.space.last must be an integer >= 2"):
        _cfg(name="window", last=1)
    with pytest.raises(ConfigError, match="unknown config key search.space.window for search space window"):
        _cfg(name="window", window=3)


def test_compare_names_our_searches_by_searcher_and_space():
    assert searched_method("bo") == ("bo", "pair")
    assert searched_method("bo_ema") == ("bo", "ema")
    assert searched_method("random_simplex") == ("random", "simplex")
    assert searched_method("ema") is None and searched_method("bo_nope") is None
    with pytest.raises(ConfigError, match=r"compare.methods: unknown method 'bo_emma' \(did you mean 'bo_ema'\?\)"):
        config_from_dict({"compare": {"methods": ["newest", "bo_emma"]}})


def test_a_space_registered_from_outside_the_package_is_configured_searched_and_compared():
    @dataclass(frozen=True)
    class PowerSettings:
        power: float = 2.0

    class NewestHeavy(SearchSpace):
        """w ∝ (age+1)^-p: one coordinate, p ∈ [0, 8]."""

        Settings = PowerSettings

        @property
        def coordinates(self):
            return ("p",)

        def bounds(self):
            return [(0.0, 8.0)]

        def weights(self, u):
            raw = [(self.k - i) ** -float(u[0]) for i in range(self.k)]
            return [r / sum(raw) for r in raw]

    SPACES.register("heavy")(NewestHeavy)
    try:
        cfg = _cfg(name="heavy", last=3, power=3.0)
        assert cfg.search.space.settings == {"power": 3.0}
        assert searched_method("bo_heavy") == ("bo", "heavy")
        sp = make_space("heavy", 3, 0.0, {"power": 3.0})
        assert sp.settings.power == 3.0 and sp.name == "heavy"
        initial = warm_start(sp, baseline_weightings(3, 2, 0.5), 1e-3)
        assert initial[0].source == "warm:newest~"  # p=8 comes close to the newest alone, not exactly
        s = make_searcher(SearchConfig(kind="bo", budget=6), sp, initial)
        for _ in range(6):
            p = s.ask()
            s.tell(p.x, -abs(sp.weights(p.x)[-1] - 0.7))
        assert max(s.ys) > max(s.ys[: len(initial)])  # the GP, over the outside space, beat its warm start
    finally:
        SPACES.unregister("heavy")


def test_a_logged_config_reads_back_with_its_space_settings():
    """Promote and resume read a search's logged config back: the space's settings are flat, as in its YAML."""
    cfg = config_from_dict({"search": {"space": {"name": "ema", "last": 3, "beta_max": 0.8}}})
    back = config_from_dict(cfg.to_dict())
    assert back.search.space == cfg.search.space
    assert cfg.to_dict()["search"]["space"] == {"name": "ema", "last": 3, "warm_start": True, "beta_max": 0.8}
