"""The ckptmerge command: the only module that touches Hydra.

    ckptmerge                                            # search λ on the embedded trajectory
    ckptmerge model=local 'model.checkpoints=[A,B]' 'eval.tasks=[T]' eval.include_path=DIR
    ckptmerge action=merge 'merge.weights=[0.3,0.7]' merge.output_dir=DIR
    ckptmerge action=watch model=local watch.dir=DIR 'eval.tasks=[T]'   # beside a training run
    ckptmerge --config-dir MY_CONF model=my-run            # the user's own presets beside the packaged ones

``ckptmerge`` (the console script), ``python -m ckptmerge`` and a checkout's ``python src/main.py`` all
run :func:`main`. Hydra composes the packaged configs (``config_folders.conf_dir()``); the result becomes a validated
:class:`ckptmerge.config.Config`; the action runs; ``result.json`` lands in the Hydra run directory. A
problem the user can fix ends the run with one line on stderr and exit status 2. SIGTERM and SIGINT
end it as a stop: the MLflow runs end KILLED, one line says so, exit status 143 / 130, and the same
command resumes. A stop after a search has committed its result (``ckptmerge.signals.committing``)
changes nothing: once ``result.json`` is written, one line says the search had finished, exit status 0.

Secrets (URI passwords, secret-named environment values) are masked in everything this process
prints or writes: stdout, stderr, the log, ``result.json`` and the Hydra run folder's ``.hydra/*.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

# Keep third-party start-up quiet and offline-safe before they are imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from ckptmerge import __version__  # noqa: E402
from ckptmerge.config_folders import conf_dir, config_folders  # noqa: E402
from ckptmerge.progress import quiet_unless_interactive  # noqa: E402

quiet_unless_interactive()  # in a log: one line per trial, not lm-eval's per-request bars (tqdm reads it on import)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from ckptmerge.tracking.secrets import redact  # noqa: E402  (os, re: nothing heavy)

log = logging.getLogger("ckptmerge")


def store_schema() -> None:
    """Register the schema's defaults (:func:`ckptmerge.config_defaults.defaults_tree`) as the config
    group ``schema`` that every preset in ``conf/`` pulls in: each default is written once, in the schema."""
    from hydra.core.config_store import ConfigStore

    from ckptmerge.config_defaults import defaults_tree

    store = ConfigStore.instance()
    for path, node in defaults_tree().items():
        group, _, name = f"schema/{path}".rpartition("/")
        store.store(group=group, name=name, node=node)


store_schema()  # before Hydra composes: here, so that every way of starting the app has it
EXIT_USER_ERROR = 2
_action = "search"  # the action being run, for the line a stop prints
_finished: Path | None = None  # the result.json of an action that has finished: a later stop undoes nothing


def _run(cfg_dict: dict, run_dir: Path, cwd: Path, config_yaml: str) -> dict:
    from ckptmerge.config import config_from_dict
    from ckptmerge.errors import ConfigError
    from ckptmerge.runtime import distributed

    cfg = config_from_dict(cfg_dict)
    world = distributed.launched_world_size()
    if cfg.runtime.backend == "ray":
        if world > 1:  # a model partitioned over ranks (ZeRO) and whole models on Ray workers do not combine
            raise ConfigError(
                f"started as {world} processes (a distributed launcher) but runtime=ray runs whole models on Ray "
                "workers from one process; ZeRO partitioning is runtime=deepspeed: use one or the other"
            )
        from ckptmerge.runtime.ray_workers import check_address

        check_address(cfg.runtime)  # an unreachable cluster: one line, exit 2, before any MLflow run
    if cfg.runtime.backend != "deepspeed":
        if world > 1:
            raise ConfigError(
                f"started as {world} processes (a distributed launcher) but runtime={cfg.runtime.name} "
                "runs in one; use runtime=deepspeed"
            )
        return _run_action(cfg, run_dir, cwd, config_yaml)
    if cfg.runtime.deepspeed_config:  # a missing or invalid file fails on every rank before any work
        import torch

        from ckptmerge.resident.zero import deepspeed_config

        deepspeed_config(torch.float32, cfg.runtime.deepspeed_config)
    # the one command channel of this launch: rank 0 sends through it, every other rank serves it
    channel = distributed.Channel(distributed.init(cfg.runtime.timeout_s, cfg.runtime.threads))
    if not channel.ranks.is_main:
        from ckptmerge.session.worker import serve

        serve(cfg, channel)
        distributed.shutdown()
        return {}
    try:
        return _run_action(cfg, run_dir, cwd, config_yaml, channel)
    finally:
        channel.close()
        distributed.shutdown()


def _run_action(cfg: Any, run_dir: Path, cwd: Path, config_yaml: str, channel: Any = None) -> dict:
    """The action from the registry; its result, with the fields every action shares, as ``result.json``."""
    global _finished
    from ckptmerge import signals
    from ckptmerge.actions.registry import ACTIONS, ActionContext
    from ckptmerge.tracking.secrets import redact_data

    # a stop after a search has committed its result waits until that result is reported here
    with signals.publishing():
        result = ACTIONS.get(cfg.action).load()(cfg, ActionContext(run_dir, cwd, config_yaml, channel))
        shared = {
            "action": cfg.action,
            "ckptmerge_version": __version__,  # which ckptmerge made this result
            "mlflow": None,
            "output_dir": None,
            "registered_model": None,
        }
        # the tracking URI's password, a token in a path: never in the run folder
        result = redact_data(json.loads(json.dumps({**shared, **result}, default=str)))
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".result.json.{os.getpid()}.tmp"  # whole or absent, whenever the process ends
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, run_dir / "result.json")
        _finished = run_dir / "result.json"
    if threading.current_thread() is threading.main_thread():
        signals.settle(_say_finished)  # a stop from here on (Hydra's shutdown, exit) changes nothing
    return result


def _say_finished(name: str) -> None:
    """The line for a stop that came after the action had finished (and ``result.json`` was written)."""
    text = f"{name} arrived after the {_action} had finished; its result stands ({_finished})"
    os.write(2, (redact(text) + "\n").encode())  # from a signal handler: no buffered stream, which may be mid-write


def _launcher_argv(argv: list[str]) -> list[str]:
    """Command-line arguments as Hydra should see them under a distributed launcher.

    The ``deepspeed`` launcher appends ``--local_rank=N`` (Hydra would reject it; the rank is in the
    environment too). Ranks other than 0 write no Hydra output folder or log: rank 0 alone reports.
    """
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("--local_rank=") or a.startswith("--local-rank="):
            continue
        if a in ("--local_rank", "--local-rank"):
            skip = True
            continue
        out.append(a)
    rank = os.environ.get("RANK", "0")
    if rank not in ("", "0"):
        import tempfile

        out += [
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
            f"hydra.run.dir={Path(tempfile.gettempdir()) / f'ckptmerge-rank{rank}'}",
        ]
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return out


def _to_dict(cfg: DictConfig) -> dict:
    """Resolve interpolations; a missing mandatory value (``???``) becomes a one-line ConfigError."""
    from omegaconf.errors import OmegaConfBaseException

    from ckptmerge.errors import ConfigError

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0]
        raise ConfigError(f"{key} must be set ({first})" if key else first) from None


class _RedactingStream:
    """``sys.stdout`` / ``sys.stderr`` with :func:`redact` applied to every write.

    The catch-all for what no ckptmerge code formats itself: MLflow's prints, a library's warning,
    the traceback of an unexpected error (an MLflow request error quotes the URL, password and all).
    ``print`` writes each argument whole, so a URI is never split across two writes.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.at_line_start = True  # False after a progress bar's "\r...": the next line needs a "\n" first

    def write(self, s: str) -> int:
        if isinstance(s, str) and s:
            self.at_line_start = s.endswith("\n")
            s = redact(s)
        return self._stream.write(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # isatty, fileno, flush, encoding, ... of the real stream


class _RedactingFilter(logging.Filter):
    """Masks secrets in log records (message and traceback) before any handler formats them: the
    console and the run folder's log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            record.msg, record.args = redact(record.getMessage()), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is logging's to report
            pass
        return True


def _mask_outputs() -> None:
    """Mask secrets in what Hydra wrote before the job started (``.hydra/{config,overrides,hydra}.yaml``,
    a sweep's ``multirun.yaml``) and in every log record from here on."""
    from hydra.types import RunMode

    from ckptmerge.tracking.secrets import redact_yaml

    flt = _RedactingFilter()
    for h in logging.getLogger().handlers:
        h.addFilter(flt)
    hc = HydraConfig.get()
    files = []
    if hc.output_subdir:
        files += sorted((Path(hc.runtime.output_dir) / hc.output_subdir).glob("*.yaml"))
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8")
        masked = redact_yaml(text)
        if masked != text:  # replaced whole: parallel sweep jobs may mask the same multirun.yaml
            tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
            tmp.write_text(masked, encoding="utf-8")
            os.replace(tmp, f)


def _warn_credentials(cfg_dict: dict) -> None:
    """One line when a URI in the config (or MLFLOW_TRACKING_URI) carries a password."""
    from ckptmerge.tracking.secrets import credentials_warning, has_uri_password, uri_password_keys

    if os.environ.get("RANK", "0") not in ("", "0"):
        return  # rank 0 reports
    keys = uri_password_keys(cfg_dict)
    if has_uri_password(os.environ.get("MLFLOW_TRACKING_URI", "")):
        keys.append("MLFLOW_TRACKING_URI")
    if keys:
        print(credentials_warning(keys), file=sys.stderr)


def _error_line(text: str) -> None:
    """``error: TEXT`` on stderr, on a line of its own even when a progress bar was drawing there."""
    fresh = getattr(sys.stderr, "at_line_start", True)
    print(("" if fresh else "\n") + f"error: {redact(' '.join(text.split()))}", file=sys.stderr)


def _report_stop(e: KeyboardInterrupt) -> None:
    """The one line a stop prints, and the shell's status for it (128 + signal number); after the action
    has finished (its ``result.json`` written), a line saying so and exit status 0."""
    from ckptmerge.errors import Stopped

    name, code = (e.signal_name, e.exit_code) if isinstance(e, Stopped) else ("SIGINT", 130)
    if _finished is not None:  # nothing to undo or resume: the result stands, and the exit status says so
        from ckptmerge.signals import settle

        settle(lambda _name: None)  # a second signal now would only interrupt the exit
        _say_finished(name)
        sys.exit(0)
    then = "resume" if _action in ("search", "watch", "pilot", "compare") else "start it again"
    _error_line(f"stopped by {name}; run the same command again to {then}")
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    global _action, _finished
    from ckptmerge.errors import CkptMergeError

    if _finished is not None:  # the next job of a sweep: a stop stops it again
        from ckptmerge.signals import install_stop_handlers

        _finished = None
        install_stop_handlers()

    _mask_outputs()
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    cwd = Path(hydra.utils.get_original_cwd())
    try:
        if cfg.get("action") == "watch" and "model" in cfg and OmegaConf.is_missing(cfg.model, "checkpoints"):
            cfg.model.checkpoints = []  # model=local's mandatory list: action=watch fills it from watch.dir
        cfg_dict = _to_dict(cfg)
        _action = str(cfg_dict.get("action", _action))
        _warn_credentials(cfg_dict)
        _run(cfg_dict, run_dir, cwd, OmegaConf.to_yaml(cfg, resolve=True))
    except CkptMergeError as e:
        log.debug("user error", exc_info=True)
        _error_line(str(e))
        sys.exit(getattr(e, "exit_code", EXIT_USER_ERROR))  # 75 when the tracking store stayed down
    except KeyboardInterrupt as e:  # SIGTERM or SIGINT (Stopped), or a plain Ctrl-C
        _report_stop(e)


def _composition_error(e: Exception) -> str:
    """One line for an override Hydra could not apply: an unknown key names the nearest known one (from
    the schema), a value where a section is expected says how to set the section's keys."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from ckptmerge.config import known_keys
    from ckptmerge.registry import did_you_mean

    # (an override Hydra cannot parse is caught before, with how to quote it: _check_override_syntax)
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    cause = e.__cause__
    full_key = str(getattr(cause, "full_key", "") or "")
    if full_key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        parent, _, name = full_key.rpartition(".")
        return f"unknown config key {full_key}{did_you_mean(name, known_keys(parent))}"
    if full_key and "merging override" in first:
        return f"{full_key} is a section of keys, not a value: set {full_key}.KEY=VALUE ({first})"
    return first


def _check_group_choices(argv: list[str]) -> None:
    """``model=pythia-7b`` (no such file in conf/model/) as one line with a suggestion, before Hydra's
    multi-line report: the command line is checked against the config folders first."""
    import difflib

    from ckptmerge.errors import ConfigError

    try:
        folders = config_folders(argv)
    except ConfigError as e:  # a --config-dir that is not a folder (Hydra would print a report)
        _error_line(str(e))
        sys.exit(EXIT_USER_ERROR)
    if folders is None:
        return  # a search path entry that is not a local folder: Hydra alone knows its options
    conf = folders[0]
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or "." in key or key.startswith("hydra") or not (conf / key).is_dir():
            continue
        options = sorted({p.stem for folder in folders for p in (folder / key).glob("*.yaml")})
        for choice in value.split(","):  # a multirun sweep lists several
            if choice and choice not in options:
                close = difflib.get_close_matches(choice, options, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (choose from: {', '.join(options)})"
                where = " or ".join([f"conf/{key}/", *(f"{folder / key}/" for folder in folders[1:])])
                print(f"error: {key}={choice} is not a config in {where}{hint}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)


def _check_moved_keys(argv: list[str]) -> None:
    """A former ``compare.*`` key that is now a merge method's setting, as one line saying where it went
    (Hydra alone would answer that the key is not in the config)."""
    from ckptmerge.config import moved_compare_key

    for arg in argv:
        key, eq, _ = arg.lstrip("+~").partition("=")
        if eq and key.startswith("compare.") and (hint := moved_compare_key(key.removeprefix("compare."))):
            print(f"error: {hint}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)


def _race_switch(argv: list[str]) -> list[str]:
    """``eval.race=true|false`` (the issue's and the docs' shorthand) is ``eval.race.enabled=...``: Hydra
    cannot put a boolean where the section ``eval.race`` is. Any other value is one line naming the key."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~") == "eval.race":
            choices = value.split(",")  # a multirun sweep: eval.race=true,false
            if not all(c.strip().lower() in ("true", "false") for c in choices):
                print(
                    f"error: eval.race must be true or false (or set eval.race.enabled, eval.race.chunks, "
                    f"eval.race.confidence), got {redact(value)!r}",
                    file=sys.stderr,
                )
                sys.exit(EXIT_USER_ERROR)
            arg = f"{key}.enabled={value}"
        out.append(arg)
    return out


def _checkpoint_holding(folder: Path) -> Path | None:
    """The checkpoint folder (a ``config.json`` beside model weights) that is ``folder`` or holds it."""
    for f in (folder, *folder.parents):
        weights = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")
        if (f / "config.json").is_file() and any(next(f.glob(w), None) for w in weights):
            return f
    return None


def _check_override_syntax(argv: list[str]) -> None:
    """An override Hydra cannot read (``tracking.experiment=essai-é``: unquoted unicode) as one line
    saying how to quote it, instead of Hydra's multi-line lexer report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's own flags (-m, --cfg job, -cn NAME) and their values
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            key, _, value = arg.partition("=")
            first = str(e).splitlines()[0].split(":", 1)[0]
            print(
                f"error: Hydra cannot read the override {redact(arg)!r} ({first}); a value with non-ASCII letters "
                f"or characters such as ()[]{{}}:,= goes in quotes: {redact(key)}='{redact(value)}' (in a shell, "
                f"quote it again: \"{redact(key)}='{redact(value)}'\")",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)


def _check_run_dir(argv: list[str]) -> None:
    """A run folder that cannot be created or written (read-only, under /proc) as one line: Hydra
    creates it before main() runs and reports a failure as a traceback. Checked by doing what Hydra
    will do (create it) and writing a probe file; a value with an interpolation is left to Hydra."""
    import tempfile

    multirun = any(a in ("-m", "--multirun") for a in argv)  # a sweep's jobs write under hydra.sweep.dir
    for key in ("hydra.sweep.dir",) if multirun else ("hydra.run.dir",):
        values = [a.lstrip("+").partition("=")[2] for a in argv if a.lstrip("+").partition("=")[0] == key]
        if not values or "${" in values[-1]:
            continue
        value = values[-1].strip("'\"")
        if held := _checkpoint_holding(Path(value).expanduser().resolve()):
            print(
                f"error: {key}={redact(value)} is inside the checkpoint folder {redact(str(held))}; a run writes "
                "result.json, .hydra/ and merges into its run folder: choose one outside every checkpoint",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)
        try:
            folder = Path(value).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".ckptmerge-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            print(
                f"error: {key}={redact(value)} cannot be created or written ({reason}); choose a writable folder",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)


def main() -> None:
    """The command: ``ckptmerge [--version] [HYDRA OPTIONS] [OVERRIDES]``."""
    from ckptmerge.signals import install_stop_handlers

    install_stop_handlers()  # SIGTERM, SIGINT, SIGHUP: the runs end KILLED, one line, exit 143 / 130 / 129
    sys.stdout, sys.stderr = _RedactingStream(sys.stdout), _RedactingStream(sys.stderr)
    sys.argv[1:] = _launcher_argv(sys.argv[1:])
    if "--version" in sys.argv[1:]:  # ckptmerge's version (Hydra's own --version would print Hydra's)
        print(f"ckptmerge {__version__}")
        sys.exit(0)
    sys.argv[1:] = _race_switch(sys.argv[1:])
    _check_group_choices(sys.argv[1:])
    _check_moved_keys(sys.argv[1:])
    _check_override_syntax(sys.argv[1:])
    _check_run_dir(sys.argv[1:])
    # Hydra raises what it cannot compose (an unknown key, a scalar over a section, an unparsable
    # override) instead of printing several lines and exiting 1: _composition_error words it as one.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    from hydra.errors import HydraException

    try:
        hydra_main()
    except KeyboardInterrupt as e:  # a stop while Hydra starts or winds down, outside the action
        _report_stop(e)
    except HydraException as e:
        _error_line(_composition_error(e))
        sys.exit(EXIT_USER_ERROR)
    if _action in FAST_EXIT_ACTIONS and _finished is not None:
        _exit_without_teardown()
    # otherwise (any other action, a failure): the interpreter's own exit


# Actions whose process holds nothing that needs the interpreter's teardown once result.json is written:
# no MLflow run, no Ray or process group, no thread of their own still working (the merge's stream threads
# have been joined and its folder published). Tearing down torch's modules takes 0.2-0.5 s of a merge that
# itself may take 3 s (benchmarks/merge_throughput.py); the output is in the kernel's page cache either way.
FAST_EXIT_ACTIONS = frozenset({"merge"})


def _exit_without_teardown() -> None:
    """Flush what this process wrote (streams, log handlers) and end it with status 0, skipping the
    interpreter's module teardown. Not while another non-daemon thread runs (an ordinary exit waits for it)."""
    import atexit

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    logging.shutdown()
    # what registered itself to run at exit still runs (logging, tqdm, libraries)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
