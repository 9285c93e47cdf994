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


def test_the_ckptmerge_command_is_python_src_main_py(tmp_path):
    """The console script and ``python -m ckptmerge`` run the same entry point as ``python src/main.py``:
    same config, same one-line errors, same exit status, from any folder."""
    import subprocess
    import sys

    script = Path(sys.executable).parent / "ckptmerge"
    assert script.exists(), "pip install -e . installs the ckptmerge command"
    bad = ["search.budget=1", f"hydra.run.dir={tmp_path / 'run'}"]  # refused while the config is validated
    via_script = subprocess.run([str(script), *bad], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    via_main = subprocess.run(
        [sys.executable, str(REPO / "src" / "main.py"), *bad], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    via_module = subprocess.run(
        [sys.executable, "-m", "ckptmerge", *bad], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert via_script.returncode == via_main.returncode == via_module.returncode == 2
    last = {p.stderr.strip().splitlines()[-1] for p in (via_script, via_main, via_module)}
    assert len(last) == 1, last
    assert "search.budget must be an integer >= 2" in via_script.stderr


def test_mlproject_has_an_entry_point_for_every_action():
    """The actions are one registry; MLproject is the one other place that lists them."""
    import re

    import yaml

    from ckptmerge.actions.registry import ACTIONS

    entry_points = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
    actions = {m.group(1) for ep in entry_points.values() for m in [re.search(r"action=(\w+)", ep["command"])] if m}
    assert actions == set(ACTIONS)


def test_test_modules_have_unique_basenames():
    """The test folders are not packages: two test modules with one basename stop collection of the suite."""
    import collections

    names = collections.Counter(p.name for p in (REPO / "tests").rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
