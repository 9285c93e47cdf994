"""A Hugging Face ``TrainerCallback`` that keeps a ckptmerge watcher beside the training run.

    from ckptmerge.integrations.hf_trainer import CkptMergeCallback
    trainer = Trainer(..., callbacks=[CkptMergeCallback(["'eval.tasks=[my_dev_task]'"...])])

On each save (rank 0 only) it marks the new ``checkpoint-N`` folder complete (``.ckptmerge-complete``:
the watcher then need not wait for the settling interval) and, when no watcher it started is running,
starts ``python -m ckptmerge action=watch model=local watch.dir=<output_dir> ...`` in its own process
group and session, with the training script's interpreter (``sys.executable``): the ckptmerge installed
there runs the watcher. Training never waits for evaluation: the watcher polls the folder, searches each
new adjacent pair and exits after ``idle_exit_s`` without a new checkpoint; the next save starts it
again (the same command continues where the last one stopped, its state is in MLflow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from transformers import TrainerCallback

from ckptmerge.watch.completeness import CKPTMERGE_MARKER


class CkptMergeCallback(TrainerCallback):
    """Start (or leave running) a ckptmerge watcher on the Trainer's ``output_dir`` at each save.

    ``overrides``: extra Hydra overrides for the watcher (tasks, tracking URI, registry name, budget...).
    ``log_file``: where the watcher's stdout and stderr go (default: ``<output_dir>/ckptmerge-watch.log``).
    ``python``: the interpreter whose installed ckptmerge runs the watcher (``python -m ckptmerge``);
    ``main_py``: a script to run instead (a checkout's ``src/main.py``).
    """

    def __init__(
        self,
        overrides: Sequence[str] = (),
        idle_exit_s: float = 3600,
        poll_s: float = 30,
        main_py: str | Path | None = None,
        python: str = sys.executable,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        self.overrides = list(overrides)
        self.idle_exit_s, self.poll_s = idle_exit_s, poll_s
        self.main_py = Path(main_py) if main_py else None
        self.python, self.cwd, self.env = python, cwd, env
        self.log_file = Path(log_file) if log_file else None
        self.process: subprocess.Popen | None = None
        self.started = 0  # how many watchers this callback has started
        self._log: IO[str] | None = None

    def command(self, output_dir: str | Path) -> list[str]:
        start = [self.python, str(self.main_py)] if self.main_py else [self.python, "-m", "ckptmerge"]
        return [
            *start,
            "action=watch",
            "model=local",
            f"watch.dir={Path(output_dir).resolve()}",
            f"watch.idle_exit_s={self.idle_exit_s}",
            f"watch.poll_s={self.poll_s}",
            *self.overrides,
        ]

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return  # one watcher per training run, started by rank 0
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():  # the Trainer is done with it: on_save runs after the checkpoint is written
            (folder / CKPTMERGE_MARKER).write_text(json.dumps({"global_step": state.global_step}))
        if self.process is None or self.process.poll() is not None:
            self._start(args.output_dir)

    def _start(self, output_dir: str) -> None:
        log_path = self.log_file or Path(output_dir) / "ckptmerge-watch.log"
        if self._log is not None:
            self._log.close()
        self._log = open(log_path, "a")
        # its own session: a Ctrl-C aimed at training does not stop the watcher mid-search
        self.process = subprocess.Popen(
            self.command(output_dir),
            cwd=self.cwd,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started += 1

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the running watcher to exit (after its idle time); its exit status, or None if none ran."""
        if self.process is None:
            return None
        code = self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
