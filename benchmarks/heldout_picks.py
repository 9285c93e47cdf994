"""Is today's window pick on seed 7 better than the stop's, or the luckier draw on 50 documents?

Scores the window points both settings picked (and their neighbours) on every document of
bench_unseen_bpb, then compares them on the documents the 50-document search never saw (selection-free)
and on the 50 it selected on. Paired bootstrap: the same resamples for every point.
usage: python benchmarks/heldout_picks.py TRAJ CACHE X1 X2 ...  (window coordinates; X1 the reference)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import sample_efficiency as se  # noqa: E402

traj = int(sys.argv[1])
cache = Path(sys.argv[2])
xs = [float(v) for v in sys.argv[3:]]
cfg50, s50, _, ckpts, _ = se.bench_setup(traj, 4, 10, 50, None)
dev50 = {t: np.asarray(v, dtype=np.int64) for t, v in s50.dev.doc_ids().items()}
cfg, session, f, _, newest = se.bench_setup(traj, 4, 10, None, cache)
from ckptmerge.evaluation import racing  # noqa: E402
from ckptmerge.session.setup import search_space  # noqa: E402

c = se.for_space(cfg, "window")
space, _ = search_space(c.search, c.compare, 4, "window")
allids = {t: np.asarray(v, dtype=np.int64) for t, v in session.dev.doc_ids().items()}
rest = {t: np.setdiff1d(allids[t], dev50.get(t, np.empty(0, dtype=np.int64))) for t in allids}
print("documents: all", {t: len(v) for t, v in allids.items()}, "held out", {t: len(v) for t, v in rest.items()})
boot, obj = session.bootstrap, session.objective
scores = {x: f.full(space.weights((x,)))[2] for x in xs}
new = f.full([0.0, 0.0, 0.0, 1.0])[2]
for label, ids in (("the 50 searched on", dev50), ("held out", rest), ("all", allids)):
    sub = {x: racing.subset(s, ids) for x, s in scores.items()}
    base = racing.subset(new, ids)
    y0 = obj(racing.metrics_of(base))
    d0 = boot.objective_draws(obj, base)
    print(f"\n{label}: newest alone {y0:.5f}")
    ref = xs[0]
    yr, dr = obj(racing.metrics_of(sub[ref])), boot.objective_draws(obj, sub[ref])
    for x in xs:
        y, d = obj(racing.metrics_of(sub[x])), boot.objective_draws(obj, sub[x])
        g_se = float(np.std(d - d0, ddof=1))
        diff, dse = y - yr, float(np.std(d - dr, ddof=1)) if x != ref else 0.0
        dist = abs(diff) / dse if dse else 0.0
        print(
            f"  window {x:.3f}: objective {y:.5f} gain {y - y0:+.5f} (s.e. {g_se:.5f}); vs {ref:.3f}: {diff:+.5f} "
            f"(paired s.e. {dse:.5f}, {dist:.2f} s.e.)"
        )
print("new evaluations", f.evaluations)
