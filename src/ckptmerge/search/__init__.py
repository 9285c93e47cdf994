"""Search spaces and searchers.

The built-ins are declared here, by name → ``module:object`` (the modules, with numpy, scipy and
scikit-optimize, are imported when one is used); a space's settings class is declared with it, so
config validation checks ``search.space.*`` without importing any space. Spaces and searchers of
your own register with ``@SPACES.register(name)`` / ``@SEARCHERS.register(name)`` in a plugin module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckptmerge.registry import Registry
from ckptmerge.search.space_settings import EmaSpaceSettings

if TYPE_CHECKING:
    from ckptmerge.search.searchers import Searcher
    from ckptmerge.search.space import SearchSpace

SPACES: Registry[type[SearchSpace]] = Registry("search space", "search.space")
SEARCHERS: Registry[type[Searcher]] = Registry("searcher", "search.kind")

SPACES.declare("pair", "ckptmerge.search.space:PairSpace")
SPACES.declare("simplex", "ckptmerge.search.space:SimplexSpace")
SPACES.declare("ema", "ckptmerge.search.families:EmaSpace", Settings=EmaSpaceSettings)
SPACES.declare("window", "ckptmerge.search.families:WindowSpace")
SPACES.declare("decay", "ckptmerge.search.families:DecaySpace")

SEARCHERS.declare("bo", "ckptmerge.search.searchers:BayesSearcher")
SEARCHERS.declare("grid", "ckptmerge.search.searchers:GridSearcher")
SEARCHERS.declare("random", "ckptmerge.search.searchers:RandomSearcher")
