"""``action=watch``: the companion process of a pretraining run.

Every ``watch.poll_s`` seconds the watched folder is listed; each checkpoint folder (by name, ordered by
step) is used once it is complete (:mod:`ckptmerge.watch.completeness`), and each adjacent pair of
complete checkpoints gets exactly one finished search (:class:`~ckptmerge.actions.search.SearchRun`,
unchanged: its resume, lock, gate and registry). State lives in MLflow (:mod:`ckptmerge.watch.ledger`):

* a pair already searched under this watch key is skipped (a quick check before any model is built,
  and the authoritative one again while holding the search's lock, so a second watcher that took the
  lock just after the first finished does not search the pair again);
* an interrupted search is continued by the search's own ``search.resume=auto``;
* a pair another process is searching right now is left to it and looked at again next poll.

After each pair the watch run's timeline is brought up to date and ``result.json`` is rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ckptmerge import signals
from ckptmerge.config import Config
from ckptmerge.errors import CkptMergeError, ConfigError
from ckptmerge.report import gain_text
from ckptmerge.tracking import names, resume
from ckptmerge.tracking.mlflow_run import SearchTracker, StoreUnavailable
from ckptmerge.tracking.search_lock import SearchRunning
from ckptmerge.tracking.secrets import redact_data
from ckptmerge.watch import ledger, timeline
from ckptmerge.watch.completeness import Settling, latest_pointer_step, why_not_ready
from ckptmerge.watch.folders import StepFolder, checkpoint_folder_hint, content_digest, step_folders

log = logging.getLogger(__name__)


class PairAlreadySearched(Exception):
    """Raised under the search's lock when another process finished the pair meanwhile."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def say(text: str) -> None:
    """One line on stdout, at once (a watcher's output is read while it runs)."""
    print(text, flush=True)


def _watched_dir(cfg: Config) -> Path:
    directory = Path(str(cfg.watch.dir)).expanduser()
    if not directory.exists():
        raise ConfigError(f"watch.dir={cfg.watch.dir} does not exist; create it (the trainer's output folder)")
    if not directory.is_dir():
        raise ConfigError(f"watch.dir={cfg.watch.dir} is not a folder")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise ConfigError(
            f"watch.dir={cfg.watch.dir} cannot be read (permission denied); watch a folder this user can list"
        )
    return directory.resolve()


class WatchRun:
    """One watch from start to idle exit (or a stop); :meth:`run` returns the ``result.json`` dict."""

    def __init__(self, cfg: Config, run_dir: Path, cwd: Path, config_yaml: str = "") -> None:
        self.cfg, self.run_dir, self.cwd, self.config_yaml = cfg, Path(run_dir).resolve(), Path(cwd), config_yaml
        self.dir = _watched_dir(cfg)
        if os.environ.get("MLFLOW_RUN_ID"):  # every pair's search would take that one run as its own
            raise ConfigError(
                "action=watch opens its own MLflow runs (one per pair and one for the watch); "
                "unset MLFLOW_RUN_ID (`mlflow run` sets it) and start the watcher directly"
            )
        self.settling = Settling(float(cfg.watch.settle_s))
        self.ready: dict[Path, StepFolder] = {}  # complete checkpoints (they stay complete)
        self.said: dict[Path, str] = {}  # the last "waiting" line printed per folder
        self.done: dict[str, str] = {}  # "older,newer" -> the search run that finished it
        self.failed: set[str] = set()  # pairs whose search failed in this process: not retried here
        self.searched_here: list[str] = []
        self.contents: dict[Path, str] = {}  # complete folder -> content_digest (its identity)
        self.vanished: dict[str, tuple[Path, Path]] = {}  # failed pairs whose input folder disappeared
        self.last_activity = time.monotonic()
        self.rows: list[dict] = []
        self._results: dict[str, dict] = {}  # search run id -> its result.json, read once

    # -- the whole thing ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        # each pair's result.json is read back from MLflow; its progress bar would be one more line per pair
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracker = tracker = SearchTracker(cfg.tracking, self.cwd)
        self.key = ledger.watch_key(cfg.to_dict(), self.dir)
        earlier = ledger.resumable_watch(tracker.client, tracker.experiment_id, self.key)
        tags = {
            names.TAG_KIND: ledger.KIND_WATCH,
            ledger.TAG_WATCH_KEY: self.key,
            ledger.TAG_WATCH_DIR: str(self.dir),
            resume.TAG_OWNER: resume.owner(),
        }
        self.run_id = tracker.start(
            run_name=f"watch-{self.dir.name}",
            config=cfg.to_dict(),
            config_yaml=self.config_yaml,
            checkpoints=[{"name": "watch.dir", "source": str(self.dir)}],
            tags=tags,
            resume_run_id=earlier,
        )
        say(
            f"watching {self.dir} (MLflow watch run {self.run_id}{', continued' if earlier else ''}); "
            f"a new pair is searched when its newer checkpoint is complete"
        )
        hint = checkpoint_folder_hint(self.dir)
        if hint:
            print(f"warning: {hint}", file=sys.stderr, flush=True)
        with tracker.finishing():
            try:
                self._refresh_timeline()
                ended = self._loop()
            except KeyboardInterrupt as e:  # SIGTERM/SIGINT: result.json says so, then the run ends KILLED
                self._write_result(f"stopped by {getattr(e, 'signal_name', 'SIGINT')}")
                raise
        return self._write_result(ended)

    def _loop(self) -> str:
        w = self.cfg.watch
        self.last_activity = time.monotonic()  # idle time counts from here, not from the store's start-up
        while True:
            open_pairs = self._poll()
            if open_pairs:  # another process is searching one: not idle until its result is on the timeline
                self.last_activity = time.monotonic()
            idle = time.monotonic() - self.last_activity
            if w.idle_exit_s is not None and idle >= w.idle_exit_s:
                say(f"nothing new in {self.dir} for {idle:.0f}s (watch.idle_exit_s={w.idle_exit_s:g}); the watch ends")
                return "idle"
            time.sleep(float(w.poll_s))

    # -- one look at the folder ----------------------------------------------------------------
    def _poll(self) -> int:
        """One look: note complete folders, search the pairs they complete; how many pairs are still open
        (complete, neither finished nor failed here: another process holds them)."""
        latest = latest_pointer_step(self.dir)
        try:
            folders = step_folders(self.dir)
        except OSError as e:  # deleted, unmounted or made unreadable while we watch: wait for it to come back
            gone = e.strerror or type(e).__name__
            if self.said.get(self.dir) != gone:
                print(
                    f"warning: watch.dir={self.dir} cannot be read ({gone}); waiting for it to come back "
                    "(watch.idle_exit_s ends the watch if it does not)",
                    file=sys.stderr,
                    flush=True,
                )
                self.said[self.dir] = gone
            return 0
        if self.said.pop(self.dir, None) is not None:
            say(f"{self.dir} can be read again")
        for pair, paths in list(self.vanished.items()):
            if all(p.is_dir() for p in paths):  # its input is back: the pair is worth another try
                del self.vanished[pair]
                self.failed.discard(pair)
                for p in paths:
                    self.ready.pop(p, None)  # and must be complete again before it is searched
        for f in folders:
            if f.path in self.ready:
                continue
            quiet = self.settling.unchanged_for(f.path)  # the clock starts at first sight, complete or not
            if quiet == 0.0:
                self.last_activity = time.monotonic()  # new or being written: the watch is not idle
            reason = why_not_ready(f.path, f.step, quiet, self.settling.settle_s, latest)
            if reason is None:
                self.ready[f.path] = f
                self.contents[f.path] = content_digest(f.path)  # complete and settled: its bytes are final
                self.said.pop(f.path, None)
            else:
                if self.said.get(f.path) != reason:
                    say(f"waiting for {f.name}: {reason}")
                    self.said[f.path] = reason
        # adjacent pairs of the folders present, oldest first; both must be complete
        open_pairs = 0
        for older, newer in zip(folders, folders[1:]):
            if older.path in self.ready and newer.path in self.ready:
                self._pair(older, newer)
                pair = f"{older.name},{newer.name}"
                open_pairs += pair not in self.done and pair not in self.failed
        return open_pairs

    def _pair(self, older: StepFolder, newer: StepFolder) -> None:
        pair = f"{older.name},{newer.name}"
        if pair in self.done or pair in self.failed:
            return
        client, exp = self.tracker.client, self.tracker.experiment_id
        finished = ledger.finished_search(client, exp, self.key, pair)
        renamed = None
        if not finished:  # the same weights under other names (a folder renamed, copied or re-linked)
            renamed = finished = ledger.finished_search_of_content(client, exp, self.key, self._content(older, newer))
        if finished:  # an earlier watcher, or another one beside this one
            self.done[pair] = finished
            same = " (the same weights under other folder names)" if renamed else ""
            say(f"pair {older.name} → {newer.name}: already searched{same} (run {finished}); skipped")
            self._refresh_timeline()
            return
        running = ledger.running_search(client, exp, self.key, pair)
        if running:
            if self.said.get(newer.path) != running:
                say(
                    f"pair {older.name} → {newer.name}: being searched by another process (run {running}); looking "
                    "again next poll"
                )
                self.said[newer.path] = running
            return
        self._search(older, newer, pair)

    def _content(self, older: StepFolder, newer: StepFolder) -> str:
        return f"{self.contents[older.path]},{self.contents[newer.path]}"

    def _search(self, older: StepFolder, newer: StepFolder, pair: str) -> None:
        from ckptmerge.actions.search import SearchRun

        cfg = self.cfg
        label = f"{older.name}+{newer.name}"
        base = Path(cfg.merge.output_dir).expanduser().resolve() if cfg.merge.output_dir else self.run_dir / "merges"
        pair_cfg = dataclasses.replace(
            cfg,
            action="search",
            model=dataclasses.replace(cfg.model, checkpoints=(str(older.path), str(newer.path)), pair=None),
            merge=dataclasses.replace(cfg.merge, output_dir=str(base / label)),
        )
        client, exp = self.tracker.client, self.tracker.experiment_id

        def not_done_meanwhile(_tracker: SearchTracker) -> None:
            finished = ledger.finished_search(client, exp, self.key, pair)
            if finished:
                raise PairAlreadySearched(finished)

        previous = self._warm_from(older)
        warm_note = ""
        if previous is not None:
            warm_note = f"; warm start from pair {previous.names[0]} → {previous.names[1]}"
            if previous.result.get("lambda") is not None:
                warm_note += f" (λ={previous.result['lambda']:.4f})"
        say(f"pair {older.name} → {newer.name}: searching (budget {cfg.search.budget}{warm_note})")
        pair_dir = self.run_dir / "pairs" / label
        pair_dir.mkdir(parents=True, exist_ok=True)
        # the pair's own resolved config: the watch's names no checkpoints, and action=promote reads it back
        pair_yaml = f"# the search action=watch ran for {older.name} → {newer.name} in {self.dir}\n" + yaml.safe_dump(
            pair_cfg.to_dict(), sort_keys=False, allow_unicode=True
        )
        search = SearchRun(
            pair_cfg,
            pair_dir,
            self.cwd,
            pair_yaml,
            tags={
                **ledger.search_tags(
                    self.run_id, self.key, self.dir, (older.step, newer.step), self._content(older, newer)
                ),
                **({names.TAG_WARM_FROM: previous.run_id} if previous is not None else {}),
            },
            on_locked=not_done_meanwhile,
            previous_result=previous.result if previous is not None else None,
        )
        # a stop after the pair's search has committed waits until its result.json is written
        with signals.publishing():
            try:
                result = search.run()
            except PairAlreadySearched as e:
                self.done[pair] = e.run_id
                say(f"pair {older.name} → {newer.name}: finished by another watcher (run {e.run_id}); skipped")
                self._refresh_timeline()
                return
            except SearchRunning as e:  # its line tells a user of action=search to wait; the watcher does so itself
                say(
                    f"pair {older.name} → {newer.name}: {str(e).replace('; wait for it or stop it', '')}; "
                    "looking again next poll"
                )
                return
            except StoreUnavailable:  # every pair would fail the same way: the watch stops, the same command resumes
                raise
            except CkptMergeError as e:  # this pair cannot be searched; the next one may be
                self.failed.add(pair)
                if not (older.path.is_dir() and newer.path.is_dir()):  # tried again once its input is back
                    self.vanished[pair] = (older.path, newer.path)
                say(f"pair {older.name} → {newer.name}: failed: {' '.join(str(e).split())}")
                return
            finally:
                self.last_activity = time.monotonic()
            result = redact_data(result)
            (pair_dir / "result.json").write_text(json.dumps(result, indent=2))
        self.done[pair] = result["mlflow"]["run_id"]
        self.searched_here.append(pair)
        self._refresh_timeline()
        row = next((r for r in self.rows if r["search_run_id"] == result["mlflow"]["run_id"]), None)
        say(self._pair_line(older, newer, result, row))
        if self.cfg.watch.promote and result.get("registered_model"):
            self._promote(label)

    def _warm_from(self, older: StepFolder) -> ledger.DonePair | None:
        """With ``watch.warm_start``, the finished search whose chosen point warm-starts the pair that begins
        at ``older``: the pair that ends there (the newest one before, when that one failed or is not
        finished yet). Read from MLflow, so a restarted watcher (and a resumed search) gets the same point."""
        if not self.cfg.watch.warm_start:
            return None
        client, exp = self.tracker.client, self.tracker.experiment_id
        before = [p for p in ledger.done_pairs(client, exp, self.key, self._results) if p.steps[1] <= older.step]
        return before[-1] if before else None

    def _promote(self, label: str) -> None:
        from ckptmerge.actions.promote import run_promote

        promote_dir = self.run_dir / "promotions" / label
        promote_dir.mkdir(parents=True, exist_ok=True)
        try:
            outcome = run_promote(
                dataclasses.replace(self.cfg, action="promote"), promote_dir, self.cwd, self.config_yaml
            )
        except CkptMergeError as e:
            say(f"  promotion after {label}: failed: {' '.join(str(e).split())}")
            return
        (promote_dir / "result.json").write_text(json.dumps(redact_data(outcome), indent=2, default=str))
        say(f"  promotion after {label}: {outcome.get('decision', '?')}: {outcome.get('reason', '')}")

    # -- what the user reads ---------------------------------------------------------------------
    @staticmethod
    def _pair_line(older: StepFolder, newer: StepFolder, result: dict[str, Any], row: dict | None) -> str:
        parts = [f"pair {older.name} → {newer.name} (step {newer.step}):"]
        if result.get("lambda") is not None:
            parts.append(f"λ={result['lambda']:.4f},")
        parts.append(f"merged {result['objective']:.5f}")
        if result.get("baseline_objective") is not None:
            parts.append(f"vs newest {result['baseline_objective']:.5f};")
        if result.get("gain"):
            parts.append(f"gain {gain_text(result['gain'])};")
        if row is not None:
            if row["steps_gained"] is not None:
                lo, hi = row["steps_gained_ci"]
                ci = f" [{lo:+.0f}, {hi:+.0f}]" if lo is not None and hi is not None else " (interval beyond the curve)"
                parts.append(f"worth {row['steps_gained']:+.0f} steps{ci};")
            else:
                parts.append(f"steps gained undefined ({row['steps_gained_undefined_because']});")
        reg = result.get("registered_model")
        parts.append(f"registered {reg['name']} v{reg['version']}" if reg else f"decision {result.get('decision')}")
        cost = result.get("cost")
        if cost:  # what the pair's search spent: fewer evaluations than the budget once it converged
            stopped = result.get("stopped") or {}
            how = (
                f"converged after {stopped['after']} of {stopped['of']}" if stopped.get("reason") == "converged" else ""
            )
            parts.append(f"({how or str(cost['evaluations'])} evaluations, {cost['documents']:,} documents)")
        return " ".join(parts)

    def _refresh_timeline(self) -> None:
        """Log every row on the watch run that is not there yet, or whose adjacent pair changed (a lower step
        arrived later: 600→700 replaces 500→700 at step 700); redraw the plot; result.json."""
        client, exp = self.tracker.client, self.tracker.experiment_id
        pairs = ledger.done_pairs(client, exp, self.key, self._results)
        self.rows = timeline.timeline_rows(pairs)
        have = ledger.logged_values(client, self.run_id, names.METRIC_MERGED_OBJECTIVE)
        new = [
            r
            for r in self.rows
            if r["step"] not in have
            or (r["merged_objective"] is not None and not math.isclose(have[r["step"]], r["merged_objective"]))
        ]
        for r in new:
            self.tracker.log_metrics(timeline.row_metrics(r), step=r["step"], run_id=self.run_id)
        if new and self.tracker.log_plots:
            self.tracker.log_figure(self.run_id, timeline.plot_timeline(self.rows), names.ARTIFACT_TIMELINE_PLOT)
        self._write_result("running")

    def _write_result(self, state: str) -> dict[str, Any]:
        result = {
            "watch_dir": str(self.dir),
            "state": state,
            "pairs": self.rows,
            "searched_by_this_process": self.searched_here,
            "failed": sorted(self.failed),
            "steps_gained_definition": "steps past the newest checkpoint at which the trajectory's monotone "
            "objective-vs-step curve reaches the merged objective (see ckptmerge.watch.timeline)",
            "mlflow": {
                "tracking_uri": self.tracker.display_uri,
                "experiment_id": self.tracker.experiment_id,
                "run_id": self.run_id,
            },
        }
        result = redact_data(result)
        tmp = self.run_dir / f".result.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, self.run_dir / "result.json")
        return result


def run_watch(cfg: Config, run_dir: Path, cwd: Path, config_yaml: str = "") -> dict[str, Any]:
    from ckptmerge.runtime.ray_workers import ray_session

    watch = WatchRun(cfg, run_dir, cwd, config_yaml)
    # runtime=ray: one Ray instance for the whole watch (each pair's search starts its own workers on it)
    with ray_session(cfg.runtime):
        return watch.run()


def run(cfg: Config, context: Any) -> dict[str, Any]:
    """``action=watch``."""
    return run_watch(cfg, context.run_dir, context.cwd, context.config_yaml)
