"""What scoring a trial chunk by chunk (eval.race) costs beyond one full evaluation of the same documents.

On the embedded trajectory's dev tasks (``--limit`` documents each, seeded as a search samples them),
the same merge is scored alternately in one lm-eval call and in ``--chunks`` calls of the racing
plan (every chunk scored: the worst case, a trial that is never raced out), ``--repeats`` times each.
Prints the seconds of each, the ratio chunked / full (median of the pairs), and the load average: the
two cores are shared, so only the ratio of interleaved runs means anything.

    python benchmarks/race_overhead.py --limit 100 --chunks 4 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from ckptmerge.config import config_from_dict
    from ckptmerge.evaluation.racing import combine
    from ckptmerge.runtime import seed_everything
    from ckptmerge.session.evaluation import EvalSession
    from ckptmerge.session.setup import resolve_sources

    cfg = config_from_dict({"eval": {"limit": a.limit, "race": {"enabled": True, "chunks": a.chunks}}})
    seed_everything(0)
    sources = resolve_sources(cfg.model, cfg.eval, progress=False)
    session, resident = EvalSession.with_resident(cfg.eval, 0, cfg.runtime, cfg.merge, sources)
    n = len(resident.cset)
    resident.apply([0.0] * (n - 2) + [0.4, 0.6])
    plan = session.chunk_plan()
    session.evaluate_with_scores("dev")  # warm-up: first-call costs are not racing's
    full_s, chunked_s, ratios = [], [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        metrics, scores = session.evaluate_with_scores("dev")
        t1 = time.perf_counter()
        parts = [session.evaluate_chunk(c)[1] for c in plan.chunks]
        t2 = time.perf_counter()
        full_s.append(t1 - t0)
        chunked_s.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
        joined = combine(parts)
        assert all(abs(joined[k].value() - scores[k].value()) < 1e-6 * max(1, abs(scores[k].value())) for k in scores)
    docs = sum(len(v) for v in session.dev.doc_ids().values())
    print(
        f"{docs} documents over {len(session.dev.names)} dev tasks, {len(plan)} chunks; load average "
        f"{os.getloadavg()[0]:.1f} (1 min), {os.getloadavg()[1]:.1f} (5 min)"
    )
    print(f"full evaluation:   {', '.join(f'{s:.2f}' for s in full_s)} s")
    print(f"chunk by chunk:    {', '.join(f'{s:.2f}' for s in chunked_s)} s")
    print(f"chunked / full: median {statistics.median(ratios):.3f} (per pair: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
