"""ckptmerge as a user installs it: an sdist built from the checkout's files, a wheel built from that
sdist, installed into a fresh virtual environment, and run from an unrelated folder: `ckptmerge` and
`python -m ckptmerge` merge, search, sweep and watch (the Trainer callback) with the packaged configs and
with a user's own config folder; `result.json`, the MLflow runs and the registered version name the
version.

The fresh environment reuses this one's installed dependencies (a ``.pth`` line naming its
site-packages, read after the new environment's own), so nothing is downloaded; ckptmerge itself
comes only from the wheel: a checkout's ``src/`` is on no path (no PYTHONPATH, and the editable
install's ``.pth`` in the reused folder is not processed, as ``.pth`` files are read only in site
folders).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# What building the wheel needs; docker/Dockerfile.* copy the same into their wheel stage.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "conf")
VERSION = re.search(r'__version__ = "([^"]+)"', (REPO / "src" / "ckptmerge" / "__init__.py").read_text()).group(1)


@dataclass
class Installed:
    sdist: Path
    wheel: Path
    venv: Path
    python: Path  # the fresh environment's interpreter
    script: Path  # its `ckptmerge` console script
    env: dict[str, str]

    def run(self, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)

    @property
    def site_packages(self) -> Path:
        return next(self.venv.glob("lib/python*/site-packages"))


def _build(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("MLFLOW_")}
    # The checkout's files, without what a build or a run left in it.
    source = root / "source"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in BUILD_INPUTS:
        path = REPO / name
        if not path.exists():
            continue  # the wheel shows what is missing
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=skip)
        else:
            shutil.copy2(path, source / name)
    # sdist (PEP 517, as `python -m build --sdist` calls it), then the wheel from the unpacked sdist.
    dist = root / "dist"
    _build([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(dist)!r})"], source, env)
    (sdist,) = dist.glob("ckptmerge-*.tar.gz")
    with tarfile.open(sdist) as tar:
        # the "data" filter where this Python has it (3.10.12, 3.11.4 and later)
        tar.extractall(root / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (root / "unpacked").iterdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _build(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(unpacked)], root, env
    )
    (wheel,) = dist.glob("ckptmerge-*.whl")
    # A fresh environment: the wheel, plus this environment's dependencies after it on the path.
    venv = root / "venv"
    _build([sys.executable, "-m", "venv", str(venv)], root, env)
    python = venv / "bin" / "python"
    _build([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], root, env)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_reuse_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return Installed(sdist, wheel, venv, python, venv / "bin" / "ckptmerge", env)


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """An unrelated working folder: no conf/, no src/ beside it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def _user_conf(folder: Path, traj) -> Path:
    """A user's config folder: a model preset for their checkpoints and an eval preset for their tasks,
    each over the packaged one (Hydra's defaults list, relative to the group)."""
    older, newer = traj.checkpoints[-2], traj.checkpoints[-1]
    (folder / "model").mkdir(parents=True)
    (folder / "eval").mkdir()
    (folder / "model" / "my-run.yaml").write_text(
        f"defaults:\n  - local\n  - _self_\nname: my-run\ncheckpoints: [{older}, {newer}]\n"
    )
    (folder / "eval" / "my-tasks.yaml").write_text(
        "defaults:\n  - default\n  - _self_\n"
        f"tasks: [ckptmerge_dev_bpb]\ntest_tasks: [ckptmerge_test_bpb]\ninclude_path: {traj.tasks_dir}\nlimit: 12\n"
    )
    return folder


def _config_sources(run_dir: Path) -> list[str]:
    import yaml

    hydra = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    return [s["path"] for s in hydra["runtime"]["config_sources"] if s["schema"] == "file"]


def test_the_wheel_carries_the_configs_and_runs_from_the_fresh_environment(installed, elsewhere):
    conf = sorted(str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml"))
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
    assert sorted(n.removeprefix("ckptmerge/conf/") for n in names if n.startswith("ckptmerge/conf/")) == conf
    assert "ckptmerge/evaluation/tasks/ckptmerge_wikitext_dev.yaml" in names and "ckptmerge/__main__.py" in names
    assert not [n for n in names if n.split("/")[0] not in ("ckptmerge", f"ckptmerge-{VERSION}.dist-info")]
    with tarfile.open(installed.sdist) as tar:
        assert f"ckptmerge-{VERSION}/conf/config.yaml" in tar.getnames()
    probe = installed.run(
        [
            str(installed.python),
            "-c",
            "import ckptmerge, importlib.metadata as m; from ckptmerge.config_folders import conf_dir; "
            "print(ckptmerge.__file__); print(conf_dir()); print(m.version('ckptmerge'))",
        ],
        elsewhere,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    module, conf_folder, metadata_version = probe.stdout.split()
    assert Path(module).is_relative_to(installed.site_packages)  # the wheel, not the checkout
    assert Path(conf_folder) == installed.site_packages / "ckptmerge" / "conf"
    assert metadata_version == VERSION and installed.wheel.name.startswith(f"ckptmerge-{VERSION}-")
    for cmd in ([str(installed.script)], [str(installed.python), "-m", "ckptmerge"]):
        proc = installed.run([*cmd, "--version"], elsewhere)
        assert (proc.returncode, proc.stdout.strip()) == (0, f"ckptmerge {VERSION}"), proc.stderr[-2000:]


def test_ckptmerge_merges_from_an_unrelated_folder(installed, elsewhere, tiny_trajectory):
    a, b = tiny_trajectory.checkpoints[-2:]
    out, run = elsewhere / "merged", elsewhere / "run"
    proc = installed.run(
        [
            str(installed.script),
            "action=merge",
            "model=local",
            f"model.checkpoints=[{a},{b}]",
            "merge.weights=[0.5,0.5]",
            f"merge.output_dir={out}",
            f"hydra.run.dir={run}",
        ],
        elsewhere,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["ckptmerge_version"] == VERSION and result["output_dir"] == str(out)
    assert result["weights"] == {a.name: 0.5, b.name: 0.5}
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert _config_sources(run) == [str(installed.site_packages / "ckptmerge" / "conf")]
    assert (run / "main.log").is_file()  # the same run folder as python src/main.py leaves


def test_a_user_config_folder_adds_presets_and_is_checked(installed, elsewhere, tiny_trajectory):
    user = _user_conf(elsewhere / "my-conf", tiny_trajectory)
    base = [str(installed.script), "action=merge", "merge.weights=[0.5,0.5]"]
    # Without the folder the preset is unknown: one line, exit 2, before Hydra.
    proc = installed.run([*base, "model=my-run"], elsewhere)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: model=my-run is not a config in conf/model/ ("
    ), proc.stderr[-2000:]
    # With it, a misspelt preset is named with the folders searched and the closest option.
    proc = installed.run([*base, "--config-dir", str(user), "model=my-rnu"], elsewhere)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: model=my-rnu is not a config in conf/model/ or {user / 'model'}/ (did you mean 'my-run'?)"
    )
    proc = installed.run([*base, "--config-dir", str(elsewhere / "missing"), "model=my-run"], elsewhere)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --config-dir {elsewhere / 'missing'} is not a folder"]
    # hydra.searchpath adds it too (as file://), and the preset's checkpoints are merged.
    run = elsewhere / "run"
    proc = installed.run(
        [
            *base,
            f"hydra.searchpath=[file://{user}]",
            "model=my-run",
            f"merge.output_dir={elsewhere / 'merged'}",
            f"hydra.run.dir={run}",
        ],
        elsewhere,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [p.name for p in tiny_trajectory.checkpoints[-2:]]
    assert json.loads((run / "result.json").read_text())["weights"] == dict.fromkeys(names, 0.5)
    assert _config_sources(run) == [str(installed.site_packages / "ckptmerge" / "conf"), str(user)]


def test_python_m_ckptmerge_searches_with_a_user_preset_and_tags_the_version(installed, elsewhere, tiny_trajectory):
    user = _user_conf(elsewhere / "my-conf", tiny_trajectory)
    uri = f"sqlite:///{elsewhere / 'mlflow.db'}"
    run = elsewhere / "run"
    proc = installed.run(
        [
            str(installed.python),
            "-m",
            "ckptmerge",
            "--config-dir",
            str(user),
            "model=my-run",
            "eval=my-tasks",
            "search.budget=3",
            f"tracking.uri={uri}",
            "tracking.log_plots=false",
            "registry.require_significant_gain=false",  # register whatever the gain: the version's tag is checked
            f"hydra.run.dir={run}",
        ],
        elsewhere,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["ckptmerge_version"] == VERSION and len(result["trials"]) == 3
    assert _config_sources(run) == [str(installed.site_packages / "ckptmerge" / "conf"), str(user)]
    client = MlflowClient(uri)
    runs = client.search_runs([result["mlflow"]["experiment_id"]], max_results=100)
    assert sorted(r.data.tags.get("ckptmerge.kind") for r in runs) == ["search", "trial", "trial", "trial"]
    assert {r.data.tags.get("ckptmerge.version") for r in runs} == {VERSION}
    version = client.get_model_version_by_alias("ckptmerge-my-run", "candidate")
    assert version.tags["ckptmerge.version"] == VERSION
    assert f"made by ckptmerge {VERSION}:" in (Path(result["output_dir"]) / "README.md").read_text()  # model card


def test_a_sweep_runs_the_installed_package_in_its_workers(installed, elsewhere, traj_cache, tiny_trajectory):
    """The joblib launcher's worker processes import the Hydra app from the wheel (two at a time)."""
    sweep = elsewhere / "multirun"
    proc = installed.run(
        [
            str(installed.script),
            "-m",
            "hydra/launcher=local",
            "hydra.launcher.n_jobs=2",
            "action=merge",
            "model.trajectory.preset=tiny",
            f"model.trajectory.cache_dir={traj_cache}",
            "model.pair=0,1",
            "merge.weights=[0.5,0.5]",
            "merge.output_dir=${hydra:runtime.output_dir}/merged",
            f"hydra.sweep.dir={sweep}",
        ],
        elsewhere,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = [p.name for p in tiny_trajectory.checkpoints]
    for job, pair in ((0, names[0:2]), (1, names[1:3])):
        result = json.loads((sweep / str(job) / "result.json").read_text())
        assert result["ckptmerge_version"] == VERSION and list(result["weights"]) == pair
        assert (sweep / str(job) / "merged" / "config.json").is_file()


TRAINER_SCRIPT = """
import json, shutil, sys
from pathlib import Path
from transformers import TrainerControl, TrainerState, TrainingArguments
from ckptmerge.integrations.hf_trainer import CkptMergeCallback

out, older, newer, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
args = TrainingArguments(output_dir=str(out), report_to=[], use_cpu=True)
callback = CkptMergeCallback(overrides, idle_exit_s=3, poll_s=0.3)
for step, source in ((2, older), (4, newer)):  # the Trainer saves checkpoint-N, then calls on_save
    shutil.copytree(source, out / f"checkpoint-{step}")
    callback.on_save(args, TrainerState(global_step=step, is_world_process_zero=True), TrainerControl())
print(json.dumps({"command": callback.command(out), "started": callback.started, "code": callback.wait(timeout=500)}))
"""


def test_the_trainer_callback_starts_the_installed_watcher(installed, elsewhere, tiny_trajectory):
    out = elsewhere / "train-out"
    uri = f"sqlite:///{elsewhere / 'mlflow.db'}"
    overrides = [
        "eval.tasks=[ckptmerge_dev_bpb]",
        f"eval.include_path={tiny_trajectory.tasks_dir}",
        "eval.limit=12",
        "search.budget=2",
        f"tracking.uri={uri}",
        "tracking.log_plots=false",
        "registry.enabled=false",
        f"hydra.run.dir={elsewhere / 'watch-run'}",
    ]
    older, newer = tiny_trajectory.checkpoints[-2:]
    proc = installed.run(
        [str(installed.python), "-c", TRAINER_SCRIPT, str(out), str(older), str(newer), json.dumps(overrides)],
        elsewhere,
    )
    log = (out / "ckptmerge-watch.log").read_text() if (out / "ckptmerge-watch.log").is_file() else ""
    assert proc.returncode == 0, (proc.stderr + log)[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["command"][:3] == [str(installed.python), "-m", "ckptmerge"]
    assert report["started"] == 1 and report["code"] == 0, log[-3000:]
    assert _config_sources(elsewhere / "watch-run") == [str(installed.site_packages / "ckptmerge" / "conf")]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("ckptmerge").experiment_id
    searches = client.search_runs([exp], "tags.`ckptmerge.kind` = 'search'")
    assert [(r.data.tags["ckptmerge.checkpoints"], r.info.status) for r in searches] == [
        ("checkpoint-2,checkpoint-4", "FINISHED")
    ]
    watch = client.search_runs([exp], "tags.`ckptmerge.kind` = 'watch'")
    assert len(watch) == 1 and watch[0].data.tags["ckptmerge.version"] == VERSION
