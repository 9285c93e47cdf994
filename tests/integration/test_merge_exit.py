"""A finished ``action=merge`` ends without the interpreter's module teardown (0.2-0.5 s of torch's, see
``cli.FAST_EXIT_ACTIONS``) but with everything it wrote flushed: stdout through a pipe, the run folder's
log, ``result.json``, and the exit handlers that libraries registered. A failed merge exits as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import MAIN
from tests.helpers import tiny_neox

# Runs src/main.py with a marker at exit (atexit: must still run) and one at module teardown (an object
# whose __del__ runs only when the interpreter clears this module's globals: must not run after a merge).
_WRAPPER = """
import atexit, runpy, sys
atexit.register(lambda: print("@@atexit ran", flush=True))
class _Teardown:
    def __del__(self):
        print("@@teardown ran", flush=True)
_marker = _Teardown()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _merge(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    a, b = tiny_neox(tmp_path / "step1", seed=1), tiny_neox(tmp_path / "step2", seed=2)
    run_dir = tmp_path / "run"
    args = [
        "model=local",
        f"model.checkpoints=[{a},{b}]",
        "action=merge",
        f"merge.output_dir={tmp_path / 'out'}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(MAIN), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, run_dir


def test_a_finished_merge_flushes_everything_and_skips_the_teardown(tmp_path: Path) -> None:
    proc, run_dir = _merge(tmp_path, "merge.weights=[0.3,0.7]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged 2 checkpoints" in proc.stdout  # block-buffered through the pipe: flushed before the exit
    assert "@@atexit ran" in proc.stdout
    assert "@@teardown ran" not in proc.stdout
    assert json.loads((run_dir / "result.json").read_text())["tensors"] > 0
    log = (run_dir / "main.log").read_text()
    assert "Wrote merged checkpoint" in log
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_failed_merge_exits_as_before(tmp_path: Path) -> None:
    proc, run_dir = _merge(tmp_path, "merge.weights=[0.3,0.3,0.4]")  # three weights for two checkpoints
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "merge.weights has 3 weights for 2 checkpoints" in proc.stderr
    assert "@@teardown ran" in proc.stdout
    assert not (run_dir / "result.json").exists()
