"""Evidence rules for raced-out trials, replayed on a sample_efficiency.py cache (docs/benchmarks.md,
"Raced-out proposals count once a proposal was scored in full"). Every evaluation the cache lacks is
real and added to it (use a copy).

usage: python benchmarks/evidence_rules.py TRAJ CACHE pair,decay,ema,window hold,firstfull,margin
       python benchmarks/evidence_rules.py TRAJ CACHE window x --trace window:stop   (checks, points, pick)
       python benchmarks/evidence_rules.py TRAJ CACHE pair,decay,ema,window 0.3,0.5,0.75,1 --unit-study
       python benchmarks/evidence_rules.py TRAJ CACHE window 1 --patience-study   (the rule's unit, patience 2-4)
Variants (how a check that follows only raced-out trials is treated):
  hold      today's code: neither grows nor resets the streak
  always    counts like any check (the rule before session 10)
  firstfull counts once a GP proposal (not an initial/warm point) has been scored in full
  margin    counts when the raced estimate is below the incumbent's posterior mean by more than
            stop_margin x the incumbent's s.e. (evidence that the proposal was no improvement)
  code      whatever Searcher.check_convergence does now
  racealone not a rule: racing with the whole budget (search.stop=budget), no stop at all
  auto      not a rule: the default search.stop=auto (converged, budget in window), alone and with racing
"""

import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import sample_efficiency as se  # noqa: E402
import stopping  # noqa: E402

traj, cachef = int(sys.argv[1]), sys.argv[2]
spaces = sys.argv[3].split(",")
variants = sys.argv[4].split(",")
trace_what = sys.argv[6] if len(sys.argv) > 6 and sys.argv[5] == "--trace" else None
seeds = [0, 1, 2, 3, 4]
cfg, session, f, ckpts, newest = se.bench_setup(traj, 4, 10, 50, Path(cachef))
from ckptmerge.evaluation.uncertainty import relative_standard_errors  # noqa: E402
from ckptmerge.search.searchers import make_searcher  # noqa: E402
from ckptmerge.session.setup import search_space  # noqa: E402


def run(space_name, seed, stop, race, variant, log=None):
    k = 2 if space_name == "pair" else 4
    c = se.for_space(cfg, space_name)
    space, initial = search_space(c.search, c.compare, k, c.search.space.name)
    s = make_searcher(replace(c.search, seed=seed, stop=stop), space, initial)
    if race:
        s.newest_first()
    told, full, best = [], [], None
    docs = raced = 0
    proposal_full = False
    for _ in range(c.search.budget):
        if variant in ("hold", "margin"):
            s._proposal_scored = False  # the rule of commit f83a9c5 (the code's own rule is firstfull)
        if variant == "always" or (variant in ("firstfull", "designfull") and proposal_full):
            s._evidence = True
        chk = s.check_convergence()
        if log is not None and chk is not None:
            log.append(f"  check crit={chk.criterion:.2f} streak={chk.streak}")
        elif log is not None and stop == "budget":
            crit = s.improvement_criterion()
            if crit is not None:
                means = np.asarray(s.posterior_mean_at(s.xs), dtype=float)
                inc = int(np.argmax(s._eligible(means)))
                log.append(
                    f"  criterion {crit:.2f} (incumbent x={s.xs[inc]} se {s.ses[inc]:.5f}, EI {crit * s.ses[inc]:.5f})"
                )
        if chk is not None and chk.converged:
            break
        p = s.ask()
        w = [0.0] * (4 - k) + space.weights(p.x)
        y, d, sc = f.full(w)
        full.append((y, d))
        # designfull: the initial design (and a warm start) is scored in full, only the model's proposals race
        racing = race and w[-1] != 1.0 and not (variant == "designfull" and p.source.startswith(("initial", "warm")))
        scored, out = se.race_or_score(session, c, sc, best if racing else None)
        docs += scored
        if out is not None and out.raced_out:
            raced += 1
            told.append((float(out.estimate), None, out.estimate_se, True))
        else:
            told.append((y, d, None, False))
            if not p.source.startswith(("initial", "warm")):
                proposal_full = True
            if best is None or y > best[0]:
                best = (y, sc)
        rel = relative_standard_errors([t[1] for t in told])
        rel = [t[2] if t[3] else v for t, v in zip(told, rel)]
        s.ses[:] = rel[:-1]
        s.tell(p.x, told[-1][0], rel[-1], eligible=not told[-1][3])
        if variant == "margin" and told[-1][3]:
            m = s.posterior_mean_at(s.xs)
            held = True
            if m is not None:
                means = np.asarray(m, dtype=float)
                inc = int(np.argmax(s._eligible(means)))
                inc_se = s.ses[inc] or float(np.median([e for e in s.ses if e]))
                if means[inc] - told[-1][0] > s.stop_margin * inc_se:
                    s._evidence = True
                    held = False
            MARGIN_COUNT[0 if held else 1] += 1
        if log is not None:
            log.append(
                f"  x={tuple(round(v, 3) for v in p.x)} {p.source:12s} y={told[-1][0]:.5f} full={y:.5f} "
                f"se={rel[-1]:.5f} raced={told[-1][3]} docs={docs}"
            )
    i, _ = s.select(c.search.select)
    if log is not None:
        log.append(f"  pick x={s.xs[i]} full={full[i][0]:.5f}")
    return {"pick": full[i], "documents": docs, "evaluations": len(told), "raced": raced, "x": s.xs[i]}


newest_e = f.evaluate([0.0] * 3 + [1.0])
totals: dict[str, list[int]] = {}
MARGIN_COUNT = [0, 0]  # raced-out trials under 'margin': held, counted


def show(space_name, name, runs, today, ref):
    docs = statistics.median(r["documents"] for r in runs)
    fulld = statistics.median(r["documents"] for r in today)
    dist = [stopping.paired_distance(r["pick"], t["pick"]) for r, t in zip(runs, today)]
    reg = [stopping.registers(r["pick"], newest_e, session.bootstrap) for r in runs]
    same = sum(a == stopping.registers(t["pick"], newest_e, session.bootstrap) for a, t in zip(reg, today))
    fr = statistics.median((r["pick"][0] - newest_e[0]) / ref for r in runs)
    within = sum(x <= 1 for x in dist)
    t = totals.setdefault(name, [0, 0, 0])
    t[0] += within
    t[1] += len(runs)
    t[2] += same
    print(
        f"traj{traj} {space_name:6s} {name:16s} docs {docs:5g} ({docs / fulld:4.0%}) evals "
        f"{[r['evaluations'] for r in runs]} raced {[r['raced'] for r in runs]} frac {fr:.2f} "
        f"dist {[round(x, 2) for x in dist]} within {within}/5 same {same}/5",
        flush=True,
    )


def unit_study(space_name: str, margins: list[float], patiences: tuple[int, ...] = (2,)) -> None:
    """The stop alone with the criterion in another unit: the largest EI over the paired standard error of
    the incumbent's gain over the newest alone (which every search scores in full; "gain"), or of its
    difference from the nearest other evaluated point ("nearest"), or the incumbent's own bootstrap error
    ("absolute"), instead of the incumbent's error
    relative to the other fully scored trials ("relative", the rule). Read off today's full runs (a converged
    search is their prefix): per margin (patience 2), documents and picks within one paired s.e. of today's."""
    k = 2 if space_name == "pair" else 4
    c = se.for_space(cfg, space_name)
    space, initial = search_space(c.search, c.compare, k, c.search.space.name)
    traces = []
    for seed in seeds:
        srch = make_searcher(replace(c.search, seed=seed, stop="budget"), space, initial)
        full, tr = [], []
        for _ in range(c.search.budget):
            crit = srch.improvement_criterion()
            vals = None
            if crit is not None:
                means = np.asarray(srch.posterior_mean_at(srch.xs), dtype=float)
                inc = int(np.argmax(srch._eligible(means)))
                gse = float(np.std(np.asarray(full[inc][1]) - np.asarray(newest_e[1]), ddof=1))
                ei = crit * srch.ses[inc]
                # the paired error against the nearest other evaluated point (max-norm in the box)
                others = [i for i in range(len(full)) if i != inc]
                near = min(others, key=lambda i: max(abs(a - b) for a, b in zip(srch.xs[i], srch.xs[inc])))
                lse = float(np.std(np.asarray(full[inc][1]) - np.asarray(full[near][1]), ddof=1))
                # the incumbent's own bootstrap error (absolute: it does not depend on which other trials
                # were scored in full, so racing them out cannot shrink it)
                ase = float(np.std(np.asarray(full[inc][1]), ddof=1))
                vals = (
                    crit,
                    ei / gse if gse > 0 else float("inf"),
                    ei / lse if lse > 0 else float("inf"),
                    ei / ase if ase > 0 else float("inf"),
                )
            p = srch.ask()
            y, d, _ = f.full([0.0] * (4 - k) + space.weights(p.x))
            full.append((y, d))
            rel = relative_standard_errors([e[1] for e in full])
            srch.ses[:] = rel[:-1]
            srch.tell(p.x, y, rel[-1])
            picked = srch.select(c.search.select)
            tr.append((vals, picked[0] if picked else len(full) - 1))
        traces.append((full, tr))
    units = (("relative", 0), ("gain", 1), ("nearest", 2), ("absolute", 3)) if patiences == (2,) else (("relative", 0),)
    for (unit, j), patience in ((u, p) for u in units for p in patiences):
        for m in margins if unit != "relative" or patiences != (2,) else [1.0]:
            spent, within = [], 0
            for full, tr in traces:
                n = stopping.stop_index([(v[j] if v else None, i) for v, i in tr], m, patience)
                n = max(1, n)
                pick, base = full[tr[n - 1][1]], full[tr[-1][1]]
                spent.append(n)
                within += stopping.paired_distance(pick, base) <= 1.0
            docs = statistics.median(spent) * 50
            print(
                f"traj{traj} {space_name:6s} unit {unit:8s} margin {m:<5g} patience {patience} "
                f"docs {docs:5g} ({docs / 500:4.0%}) evals {spent} within {within}/5",
                flush=True,
            )


if len(sys.argv) > 5 and sys.argv[5] in ("--unit-study", "--patience-study"):
    for space_name in spaces:
        unit_study(space_name, [float(v) for v in variants], (2,) if sys.argv[5] == "--unit-study" else (2, 3, 4))
    sys.exit(0)

if trace_what:
    sp, setting = trace_what.split(":")
    for seed in seeds:
        log: list[str] = []
        today = run(sp, seed, "budget", False, "code", log)
        print(f"seed {seed} today:\n" + "\n".join(log))
        stop, race_, variant = {"stop": ("converged", False, "code"), "today": ("budget", False, "code")}.get(
            setting, ("converged", True, setting)
        )
        log = []
        r = run(sp, seed, stop, race_, variant, log)
        print(
            f"seed {seed} {setting}: dist {stopping.paired_distance(r['pick'], today['pick']):.2f}\n" + "\n".join(log)
        )
    sys.exit(0)

for space_name in spaces:
    k = 2 if space_name == "pair" else 4
    ref = max(v[0] for key, v in f.cache.items() if (k == 4 or key[:2] == (0.0, 0.0))) - newest_e[0]
    today = [run(space_name, s, "budget", False, "code") for s in seeds]
    show(space_name, "stop", [run(space_name, s, "converged", False, "code") for s in seeds], today, ref)
    for v in variants:
        if v == "racealone":  # racing with the whole budget (search.stop=budget, eval.race=true)
            show(space_name, "race/budget", [run(space_name, s, "budget", True, "code") for s in seeds], today, ref)
            continue
        if v == "auto":  # the default search.stop=auto (the space decides), without and with racing
            show(space_name, "auto", [run(space_name, s, "auto", False, "code") for s in seeds], today, ref)
            show(space_name, "auto+race", [run(space_name, s, "auto", True, "code") for s in seeds], today, ref)
            continue
        show(space_name, f"both/{v}", [run(space_name, s, "converged", True, v) for s in seeds], today, ref)
for name, (w, n, same) in totals.items():
    print(f"traj{traj} TOTAL {name:16s} within {w}/{n} same {same}/{n}")
print("margin variant: raced-out trials held / counted", MARGIN_COUNT)
print("new evaluations", f.evaluations)
