"""The README's two commands are the ones CI and users run."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    lines = (REPO / "README.md").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip().startswith("python3 -m venv .venv")]


def test_readme_starts_with_install_and_run_then_install_and_test():
    cmds = _readme_commands()
    assert len(cmds) >= 2
    assert cmds[0].endswith("python src/main.py")
    assert cmds[1].endswith("python -m pytest -q") and '".[dev]"' in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = _readme_commands()[1]
    assert test_cmd in ci.splitlines()
