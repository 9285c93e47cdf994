"""Replay a finished search (the README's first command, its MLflow store) through the stop rule, check by check.

Reads the child runs (lambda, objective, raced_out, objective_se) and each fully scored trial's stored
per-document scores, tells a fresh searcher as TrialLoop._tell does, and prints the criterion before
each proposal (and the incumbent's error, and the criterion in the gain's paired error instead).
usage: python benchmarks/replay_stop.py WORKDIR [code|hold ...]  (WORKDIR: where src/main.py ran, default store)
"""

import glob
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from ckptmerge.config import config_from_dict
from ckptmerge.evaluation.doc_scores import scores_from_json
from ckptmerge.evaluation.uncertainty import Bootstrap, relative_standard_errors
from ckptmerge.search.searchers import make_searcher

work = Path(sys.argv[1])
found = glob.glob(str(work / "outputs/*/*/result.json"))
result = json.loads(Path(found[0]).read_text()) if found else {}
client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
runs = [r for r in client.search_runs(["1"]) if "mlflow.parentRunId" in r.data.tags and "trial" in r.data.params]
runs = sorted(runs, key=lambda r: int(r.data.params["trial"]))
cfg = config_from_dict({})
boot = Bootstrap(cfg.eval.bootstrap, cfg.eval.confidence, cfg.search.seed)
metric = "ckptmerge_dev_bpb/bits_per_byte"
trials = []
for r in runs:
    lam = float(r.data.params.get("lambda"))
    raced = bool(r.data.metrics.get("raced_out", 0.0))
    draws = None
    if not raced:
        local = client.download_artifacts(r.info.run_id, "doc_scores.json")
        scores = scores_from_json(Path(local).read_text())
        draws = -boot.metric_draws(metric, scores[metric])
    y = float(r.data.metrics["objective"])
    se = r.data.metrics.get("objective_se")
    trials.append((lam, y, raced, se, draws))
    print(f"trial {r.data.params['trial']}: lambda {lam:.4f} objective {y:.5f} raced {raced} se {se}")


def replay(rule: str) -> None:
    s = make_searcher(replace(cfg.search, stop="converged"))
    if any(t[2] for t in trials):
        s.newest_first()
    told = []
    line = []
    for lam, y, raced, se, draws in trials:
        if rule == "hold":
            s._proposal_scored = False
        chk = s.check_convergence()
        if chk is not None:
            m = np.asarray(s.posterior_mean_at(s.xs), dtype=float)
            inc = int(np.argmax(s._eligible(m)))
            newest = next(d for (lam_, _, r_, _, d) in trials if lam_ == 1.0)
            gse = float(np.std(told[inc][0] - newest, ddof=1)) if told[inc][0] is not None else float("nan")
            line.append(
                f"{chk.criterion:.2f}/{chk.streak}{' STOP' if chk.converged else ''}"
                f"(EI {chk.criterion * s.ses[inc]:.5f}, se {s.ses[inc]:.5f} at {s.xs[inc][0]:.3f}; "
                f"gain se {gse:.5f} -> {chk.criterion * s.ses[inc] / gse:.2f})"
            )
        p = s.ask()
        if abs(p.x[0] - lam) > 1e-3:
            line.append(f"(proposed {p.x[0]:.4f})")
        told.append((draws, se, raced))
        rel = relative_standard_errors([d for d, _, _ in told])
        rel = [e if r else v for (_, e, r), v in zip(told, rel)]
        s.ses[:] = rel[:-1]
        s.tell((lam,), y, rel[-1], eligible=not raced)
        line.append(f"[{lam:.3f}{'r' if raced else ''}]")
    print(rule, " ".join(line))


for rule in sys.argv[2:] or ("code", "hold"):
    replay(rule)
print({k: result.get(k) for k in ("cost", "stopped")})
