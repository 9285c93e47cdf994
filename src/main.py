"""ckptmerge entry point: the only module that touches Hydra.

    python src/main.py                                   # search λ on the embedded trajectory
    python src/main.py model=local 'model.checkpoints=[A,B]' 'eval.tasks=[T]' eval.include_path=DIR
    python src/main.py action=merge 'merge.weights=[0.3,0.7]' merge.output_dir=DIR

Hydra composes ``conf/``; the result becomes a validated :class:`ckptmerge.config.Config`; the action
runs; ``result.json`` lands in the Hydra run directory. A problem the user can fix ends the run with
one line on stderr and exit status 2.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

# Keep third-party start-up quiet and offline-safe before they are imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without installing

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

log = logging.getLogger("ckptmerge")
EXIT_USER_ERROR = 2


def _run(cfg_dict: dict, run_dir: Path, cwd: Path, config_yaml: str) -> dict:
    from ckptmerge.config import config_from_dict
    from ckptmerge.errors import ConfigError
    from ckptmerge.runtime import distributed

    cfg = config_from_dict(cfg_dict)
    world = distributed.launched_world_size()
    if cfg.runtime.backend != "deepspeed":
        if world > 1:
            raise ConfigError(f"started as {world} processes (a distributed launcher) but runtime={cfg.runtime.name} "
                              "runs in one; use runtime=deepspeed")
        return _run_action(cfg, run_dir, cwd, config_yaml)
    if cfg.runtime.deepspeed_config:  # a missing or invalid file fails on every rank before any work
        import torch

        from ckptmerge.runtime.zero import deepspeed_config

        deepspeed_config(torch.float32, cfg.runtime.deepspeed_config)
    ranks = distributed.init(cfg.runtime.timeout_s, cfg.runtime.threads)
    if not ranks.is_main:
        from ckptmerge.actions.worker import serve

        serve(cfg)
        return {}
    try:
        return _run_action(cfg, run_dir, cwd, config_yaml)
    finally:
        distributed.channel.close()


def _run_action(cfg, run_dir: Path, cwd: Path, config_yaml: str) -> dict:  # type: ignore[no-untyped-def]
    if cfg.action == "search":
        from ckptmerge.actions.search import SearchRun

        result = SearchRun(cfg, run_dir, cwd, config_yaml).run()
        from ckptmerge.report import print_search_summary

        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
        print_search_summary(result, run_dir)
        return result
    if cfg.action == "merge":
        from ckptmerge.actions.merge import run_merge

        return run_merge(cfg)
    if cfg.action == "pilot":
        from ckptmerge.actions.pilot import run_pilot

        return run_pilot(cfg, run_dir, cwd, config_yaml)
    if cfg.action == "compare":
        from ckptmerge.actions.compare import run_compare

        return run_compare(cfg, run_dir, cwd, config_yaml)
    if cfg.action == "promote":
        from ckptmerge.actions.promote import run_promote

        return run_promote(cfg, run_dir, cwd, config_yaml)
    from ckptmerge.errors import ConfigError

    raise ConfigError(f"action={cfg.action} is not available in this version yet")


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

        out += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
                f"hydra.run.dir={Path(tempfile.gettempdir()) / f'ckptmerge-rank{rank}'}"]
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from ckptmerge.errors import CkptMergeError

    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    cwd = Path(hydra.utils.get_original_cwd())
    try:
        cfg_dict = _to_dict(cfg)
        _run(cfg_dict, run_dir, cwd, OmegaConf.to_yaml(cfg, resolve=True))  # type: ignore[arg-type]
    except CkptMergeError as e:
        msg = " ".join(str(e).split())
        log.debug("user error", exc_info=True)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def _check_group_choices(argv: list[str]) -> None:
    """``model=pythia-7b`` (no such file in conf/model/) as one line with a suggestion, before Hydra's
    multi-line report: the command line is checked against the config folders first."""
    import difflib

    conf = Path(__file__).resolve().parent.parent / "conf"
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if not eq or "." in key or key.startswith("hydra") or not (conf / key).is_dir():
            continue
        options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
        for choice in value.split(","):  # a multirun sweep lists several
            if choice and choice not in options:
                close = difflib.get_close_matches(choice, options, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (choose from: {', '.join(options)})"
                print(f"error: {key}={choice} is not a config in conf/{key}/{hint}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    sys.argv[1:] = _launcher_argv(sys.argv[1:])
    _check_group_choices(sys.argv[1:])
    main()
