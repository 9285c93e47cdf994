"""A watch's state lives in MLflow, so a watcher killed at any point (SIGKILL included) and started again
with the same command picks up where it was.

* The watch key: the watched folder and every setting that changes a pair's search (not the budget,
  not the watch's own timing). Tag ``ckptmerge.watch.key`` on the watch run and on every search it
  starts.
* A pair is *done* when a FINISHED search run carries that key and ``ckptmerge.checkpoints`` naming
  the pair. Whoever ran it (this watcher, an earlier one, a second one beside it), it is not run again.
* The watch run (``ckptmerge.kind=watch``): the newest one with the key that did not finish and whose
  process is gone is continued; otherwise a new one is opened. Its timeline holds every done pair.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptmerge.tracking import names, resume, search_lock

log = logging.getLogger(__name__)

KIND_WATCH, TAG_WATCH_KEY, TAG_WATCH_RUN = names.KIND_WATCH, names.TAG_WATCH_KEY, names.TAG_WATCH_RUN
TAG_WATCH_STEPS, TAG_WATCH_DIR = names.TAG_WATCH_STEPS, names.TAG_WATCH_DIR


def watch_key(config: Mapping[str, Any], directory: Path) -> str:
    """The hash that ties a watch and its searches together across restarts, from the whole
    configuration as a dict (``Config.to_dict()``) less what does not change a search."""
    d = copy.deepcopy(dict(config))
    for section in ("watch", "action", "pilot", "compare"):  # the watch's timing and other actions' settings
        d.pop(section, None)
    d["tracking"].pop("log_plots", None)
    d["search"].pop("budget", None)  # a restart may give more evaluations, as a resumed search may
    for when_to_stop in ("stop", "stop_margin", "patience"):  # nor when to stop spending them
        d["search"].pop(when_to_stop, None)
    d["search"].pop("resume", None)
    d["merge"].pop("output_dir", None)
    d["merge"].pop("overwrite", None)
    d["model"].pop("checkpoints", None)
    return resume.key_hash({"dir": str(directory), "config": d})


def _escape(value: str) -> str:
    return value.replace("'", "\\'")


def resumable_watch(client: Any, experiment_id: str, key: str) -> str | None:
    """The newest unfinished watch run with this key whose process is gone (killed, crashed, stopped)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_WATCH_KEY}` = '{key}' and tags.`{names.TAG_KIND}` = '{KIND_WATCH}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        if run.info.status == "FINISHED":
            return None  # the last watch ended by itself (idle): the same command opens a new one
        if not resume._owner_alive(run.data.tags.get(resume.TAG_OWNER)):
            return run.info.run_id
    return None


def finished_search(client: Any, experiment_id: str, key: str, pair_names: str) -> str | None:
    """The run id of a FINISHED search of this pair under this watch key, if there is one."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_WATCH_KEY}` = '{key}' and tags.`{names.TAG_KIND}` = 'search' and "
            f"tags.`{names.TAG_CHECKPOINTS}` = '{_escape(pair_names)}' and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def finished_search_of_content(client: Any, experiment_id: str, key: str, content: str) -> str | None:
    """The run id of a FINISHED search under this watch key of the same weights (``TAG_WATCH_CONTENT``),
    whatever the folders are called now."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_WATCH_KEY}` = '{key}' and tags.`{names.TAG_KIND}` = 'search' and "
            f"tags.`{names.TAG_WATCH_CONTENT}` = '{_escape(content)}' and attributes.status = 'FINISHED'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def running_search(client: Any, experiment_id: str, key: str, pair_names: str) -> str | None:
    """A RUNNING search of this pair whose process is alive (on this host: its pid; on another, with a
    remote store: a fresh heartbeat on its claim): a hint to leave the pair alone this poll without
    building a model, which for a large one takes minutes. The search's own lock decides; this saves work."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_WATCH_KEY}` = '{key}' and tags.`{names.TAG_KIND}` = 'search' and "
            f"tags.`{names.TAG_CHECKPOINTS}` = '{_escape(pair_names)}' and attributes.status = 'RUNNING'"
        ),
        max_results=5,
    )
    now = time.time()
    for run in runs:
        tags = run.data.tags
        if resume._owner_alive(tags.get(resume.TAG_OWNER)) or search_lock.claim_tag_live(
            tags.get(search_lock.TAG_CLAIM), now
        ):
            return run.info.run_id
    return None


@dataclass
class DonePair:
    """A finished search of one adjacent pair, as the timeline needs it."""

    names: tuple[str, str]
    steps: tuple[int, int]
    run_id: str
    result: dict[str, Any]

    @property
    def newest_objective(self) -> float | None:
        return self.result.get("baseline_objective")

    def older_objective(self) -> float | None:
        """The older checkpoint alone (λ=0), when the search evaluated it (search.alpha=0)."""
        for t in self.result.get("trials", []):
            if t.get("lambda") == 0.0 and t.get("objective") is not None:
                return float(t["objective"])
        return None


def done_pairs(client: Any, experiment_id: str, key: str, cache: dict[str, dict] | None = None) -> list[DonePair]:
    """Every finished search under this watch key, with its ``result.json`` artifact, oldest step first.
    ``cache`` (run id -> result) spares downloading a finished run's result again."""
    cache = {} if cache is None else cache
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_WATCH_KEY}` = '{key}' and tags.`{names.TAG_KIND}` = 'search' "
            "and attributes.status = 'FINISHED'"
        ),
        max_results=10000,
    )
    out = []
    for run in runs:
        tags = run.data.tags
        try:
            older, newer = tags[names.TAG_CHECKPOINTS].split(",")
            s_old, s_new = (int(s) for s in tags[TAG_WATCH_STEPS].split(","))
            if run.info.run_id not in cache:
                cache[run.info.run_id] = json.loads(
                    Path(client.download_artifacts(run.info.run_id, names.ARTIFACT_RESULT)).read_text()
                )
            result = cache[run.info.run_id]
        except (KeyError, ValueError, OSError) as e:
            log.warning("search run %s has no readable pair or result (%s); left off the timeline", run.info.run_id, e)
            continue
        out.append(DonePair((older, newer), (s_old, s_new), run.info.run_id, result))
    return sorted(out, key=lambda p: p.steps)


def logged_values(client: Any, run_id: str, metric: str) -> dict[int, float]:
    """The latest value of ``metric`` logged at each step (a step logged again shows its newest value)."""
    latest: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, metric):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return {step: v for step, (_, v) in latest.items()}


def search_tags(
    watch_run_id: str, key: str, directory: Path, steps: tuple[int, int], content: str | None = None
) -> Mapping[str, str]:
    return {
        TAG_WATCH_RUN: watch_run_id,
        TAG_WATCH_KEY: key,
        TAG_WATCH_DIR: str(directory),
        TAG_WATCH_STEPS: f"{steps[0]},{steps[1]}",
        **({names.TAG_WATCH_CONTENT: content} if content else {}),
    }
