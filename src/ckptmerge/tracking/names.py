"""Every MLflow param, metric and tag name the product writes, in one place (others script against them)."""

from __future__ import annotations

import re

# Child run (one per trial)
PARAM_LAMBDA = "lambda"  # weight of the newest checkpoint, for a pair
PARAM_WEIGHT_PREFIX = "weight."  # weight.<checkpoint name>, for every checkpoint
PARAM_TRIAL = "trial"
PARAM_POINT_PREFIX = "u"  # u1..u{k-1}: the searched point for k > 2 (see search/space.py)
PARAM_PROPOSED_BY = "proposed_by"  # initial | EI | LCB | PI | grid | random | gap
PARAM_PENDING_AT_PROPOSAL = "pending_at_proposal"  # trials in flight when this one was proposed (runtime=ray)
METRIC_OBJECTIVE = "objective"  # oriented so that higher is better
METRIC_OBJECTIVE_SE = "objective_se"  # its bootstrap standard error over documents
METRIC_MERGE_SECONDS = "merge_seconds"  # a trial's in-place merge alone, where it ran (its evaluation: eval_seconds)
# a trial's bill (session/cost.py): seconds of dev evaluation, documents and tokens the model read
METRIC_EVAL_SECONDS = "eval_seconds"
METRIC_DOCS_EVALUATED = "docs_evaluated"
METRIC_TOKENS_EVALUATED = "tokens_evaluated"
# 1: the trial was raced out (eval.race): scored on part of the documents, significantly worse than the
# incumbent there; its objective is an estimate and it is never the result. 0: scored on every document.
METRIC_RACED_OUT = "raced_out"
ARTIFACT_DOC_SCORES = "doc_scores.json"  # per-document dev scores of the trial (see evaluation/doc_scores.py)
TAG_NEXT_ACQUISITION = "gp.next_acquisition"
TAG_TRIAL_STATUS = "ckptmerge.trial_status"

# Parent run (one per search)
TAG_STOPPED = "ckptmerge.stopped"  # parent run: "converged after N of B" when the stop rule ended the search
METRIC_BEST_OBJECTIVE = "best_objective"  # logged with step = trial index
METRIC_BEST_LAMBDA = "best_lambda"  # weight of the newest checkpoint in the best merge
METRIC_BASELINE_OBJECTIVE = "baseline_objective"  # the newest checkpoint alone (λ=1)
METRIC_GAIN = "gain_over_newest"
# The paired interval of a gain (dev: gain_over_newest; test: test_gain.<TASK/METRIC>), suffixed
# .ci_low, .ci_high, .p_value, .significant (1/0).
PREFIX_TEST_GAIN = "test_gain."
TAG_DECISION = "ckptmerge.decision"  # registered | keep-newest
TAG_SELECTED_BY = "ckptmerge.selected_by"  # posterior_mean | observed: which rule chose the result
METRIC_RESCORED_OBJECTIVE = "rescored_objective"  # the written merge, reloaded from disk
PREFIX_BEST = "best."  # best.<TASK/METRIC>: dev metrics of the best merge
PREFIX_TEST = "test."  # test.<model>.<TASK/METRIC>, model = "best" or a checkpoint name
TAG_KIND = "ckptmerge.kind"  # search | trial
TAG_OBJECTIVE = "ckptmerge.objective"
TAG_CHECKPOINTS = "ckptmerge.checkpoints"
TAG_ERROR = "ckptmerge.error"  # first line of the error that ended a run (or trial) FAILED
TAG_STOPPED_BY = "ckptmerge.stopped_by"  # SIGTERM | SIGINT: the signal that ended a run (or trial) KILLED
TAG_VERSION = "ckptmerge.version"  # on every run ckptmerge creates and every model version it registers
# Watch run (action=watch: one per watch, its metrics stepped by the newer checkpoint's training step)
KIND_WATCH = "watch"
TAG_WATCH_KEY = "ckptmerge.watch.key"  # on the watch run and its searches: folder + search settings
TAG_WATCH_RUN = "ckptmerge.watch.run_id"  # on each search: the watch run that started (or resumed) it
TAG_WATCH_STEPS = "ckptmerge.watch.steps"  # on each search: "<older step>,<newer step>"
TAG_WATCH_DIR = "ckptmerge.watch.dir"
TAG_WATCH_CONTENT = "ckptmerge.watch.content"  # on each search: "<older>,<newer>" digests of the weights' bytes
TAG_WARM_FROM = "ckptmerge.watch.warm_from"  # on a search: the previous pair's search whose point it also started from
METRIC_NEWEST_OBJECTIVE = "newest_objective"  # the newer checkpoint alone
METRIC_MERGED_OBJECTIVE = "merged_objective"  # the pair's best merge
METRIC_WATCH_GAIN = "gain"  # their difference; gain.ci_low, gain.ci_high, gain.p_value
METRIC_WATCH_LAMBDA = "lambda"
METRIC_STEPS_GAINED = "steps_gained"  # steps_gained.ci_low, .ci_high (see ckptmerge.watch.timeline)
ARTIFACT_TIMELINE_PLOT = "watch_timeline.png"
# What MLflow's UI reads: the experiment kind picks the page an experiment opens on (untagged, MLflow 3
# opens the GenAI traces overview); the note is the run's (or experiment's) markdown description.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_DEVELOPMENT = "custom_model_development"
TAG_NOTE = "mlflow.note.content"
ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_CHECKPOINTS = "checkpoints.json"
ARTIFACT_RESULT = "result.json"
ARTIFACT_TEST_DOC_SCORES = "test_doc_scores.json"  # {"best" | checkpoint: per-document test scores}
ARTIFACT_PLOT = "gp_posterior.png"
MODEL_ARTIFACT = "model"

_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def safe_key(name: str) -> str:
    """A name MLflow accepts for params and metrics (letters, digits, ``_-. /``)."""
    return _BAD.sub("_", name)


def weight_param(checkpoint: str) -> str:
    return safe_key(PARAM_WEIGHT_PREFIX + checkpoint)
