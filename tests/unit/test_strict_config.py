"""The configuration refuses what it does not understand: every configurable key, found by walking the
schema (not a hand list), given a wrong-typed value is one line naming the key, exit 2, nothing
written; validation is cycle-free and loads no torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from ckptmerge.config import SECTIONS, RaceConfig, SpaceConfig, TrajectoryConfig, config_from_dict
from ckptmerge.errors import ConfigError
from ckptmerge.merge.registry import METHODS, settings_of
from ckptmerge.schema import fields_of
from ckptmerge.search import SPACES
from ckptmerge.search.space_settings import space_settings_of
from tests.conftest import MAIN, REPO

# Wrong values for each kind of key, as Python values (config_from_dict) and as command-line text.
BAD: dict[str, list[tuple[Any, str]]] = {
    "bool": [("no", "no"), ("yes", "yes"), (1, "1"), ((1, 2), "[1,2]")],
    "int": [(True, "true"), (1.5, "1.5"), (-1, "-1"), ((1, 2), "[1,2]")],
    "float": [("abc", "abc"), (True, "true"), ((1, 2), "[1,2]")],
    "choice": [("no_such_choice", "no_such_choice"), (True, "true"), ((1, 2), "[1,2]")],
    "text": [((1, 2), "[1,2]"), ({"a": 1}, "{a: 1}"), (True, "true")],
    "size": [("lots", "lots"), (True, "true"), (-1, "-1"), ((1, 2), "[1,2]")],
    "list": [("abc", "abc"), (True, "true"), (1.5, "1.5")],
    "mapping": [((1, 2), "[1,2]"), ("abc", "abc"), (True, "true")],
}


def _kind(annotation: Any) -> str:
    """The kind of a schema annotation: ``X | None`` and ``Annotated[X, ...]`` are X's kind."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _kind(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds = {_kind(a) for a in get_args(annotation) if a is not type(None)}
        if kinds == {"int", "float"}:  # a Number: an int or a float, kept as given
            return "float"
        return "size" if kinds == {"int", "text"} else kinds.pop()
    if origin is Literal:
        return "choice"
    if origin is tuple:
        return "list"
    if origin in (dict, Mapping) or annotation in (dict, Mapping) or origin is typing.Mapping:
        return "mapping"
    return {bool: "bool", int: "int", float: "float", str: "text"}[annotation]


def _nested(section: type) -> dict[str, type]:
    return {"ModelConfig": {"trajectory": TrajectoryConfig}, "EvalConfig": {"race": RaceConfig}}.get(
        section.__name__, {"space": SpaceConfig}
    )


def schema_keys() -> list[tuple[str, str, list[str]]]:
    """``(full key, kind, extra overrides that select it)`` for every configurable key: each section's
    fields, the nested sections', and the settings of every declared merge method and search space."""
    out: list[tuple[str, str, list[str]]] = [("action", "text", []), ("plugins", "list", [])]

    def walk(cls: type, prefix: str) -> None:
        nested = _nested(cls)
        for name, info in fields_of(cls).items():
            if name == "settings" and prefix in ("merge", "search.space"):
                continue  # free-form here: each method's / space's settings are walked below
            if name in nested and prefix in ("model", "search", "eval"):
                walk(nested[name], f"{prefix}.{name}")
                continue
            out.append((f"{prefix}.{name}", _kind(info.annotation), []))

    for prefix, cls in SECTIONS.items():
        walk(cls, prefix)
    for method in METHODS:
        for name, info in fields_of(settings_of(method)).items():
            out.append((f"merge.{name}", _kind(info.annotation), [f"merge={method}"]))
    for space in SPACES:
        for name, info in fields_of(space_settings_of(space)).items():
            out.append((f"search.space.{name}", _kind(info.annotation), [f"search/space={space}"]))
    return out


KEYS = schema_keys()


def _data(key: str, value: Any, select: list[str]) -> dict[str, Any]:
    """A config dict that sets ``key`` (dotted) to ``value``, with what ``select`` picks (merge=M, space=S)."""
    data: dict[str, Any] = {"model": {"source": "local", "name": "local", "checkpoints": ["/no/a", "/no/b"]}}
    for s in select:
        group, _, name = s.partition("=")
        if group == "merge":
            data["merge"] = {"method": name}
        else:
            data.setdefault("search", {})["space"] = {"name": name, "last": 4}
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return data


def test_the_walk_finds_every_section_and_the_settings():
    keys = {k for k, _, _ in KEYS}
    assert {"merge.overwrite", "registry.enabled", "tracking.log_plots", "eval.limit", "watch.promote"} <= keys
    assert {"model.trajectory.seed", "search.space.last", "merge.floor", "merge.k", "search.space.beta_max"} <= keys
    assert {"runtime.workers", "runtime.address", "runtime.backend"} <= keys  # runtime=ray's keys
    assert {"eval.race.enabled", "eval.race.chunks", "eval.race.confidence"} <= keys
    assert len(keys) >= 70


def test_eval_race_takes_a_switch_alone_and_checks_its_settings():
    base = {"model": {"source": "local", "name": "local", "checkpoints": ["/no/a", "/no/b"]}}
    assert config_from_dict({**base, "eval": {"race": True}}).eval.race.enabled is True
    race = config_from_dict({**base, "eval": {"race": {"chunks": 8, "confidence": 0.995}}}).eval.race
    assert (race.enabled, race.chunks, race.confidence) == (RaceConfig.enabled, 8, 0.995)
    for bad, key in [
        ({"chunks": 1}, "eval.race.chunks"),
        ({"confidence": 0.5}, "eval.race.confidence"),
        ({"confidence": 1.0}, "eval.race.confidence"),
        ({"chunk": 4}, "eval.race.chunk"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_dict({**base, "eval": {"race": bad}})


def test_the_command_line_takes_eval_race_true_and_refuses_anything_else_in_one_line(tmp_path):
    common = ["model=local", "model.checkpoints=[/no/such/a,/no/such/b]", f"hydra.run.dir={tmp_path / 'run'}"]
    ok = subprocess.run(
        [sys.executable, str(MAIN), *common, "eval.race=true", "eval.race.chunks=3", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "race:\n    enabled: true\n    chunks: 3" in ok.stdout, ok.stdout
    bad = subprocess.run(
        [sys.executable, str(MAIN), *common, "eval.race=maybe"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "eval.race must be true or false" in lines[0], bad.stderr


@pytest.mark.parametrize("key, kind, select", KEYS, ids=[k for k, _, s in KEYS])
def test_every_key_refuses_every_wrong_type(key, kind, select):
    for value, _ in BAD[kind]:
        with pytest.raises(ConfigError) as e:
            config_from_dict(_data(key, value, select))
        text = str(e.value)
        assert "\n" not in text, text
        assert key in text, (value, text)


# The same through the command line, in one interpreter (src/main.py run as __main__ per case): each key
# gets one wrong value, cycling through its kind's list so that every wrong value reaches the CLI too.
DRIVER = r"""
import contextlib, io, json, runpy, sys
main, cases, out = sys.argv[1], json.loads(sys.argv[2]), []
for args in cases:
    sys.argv = [main, *args]
    err, code = io.StringIO(), 0
    so, se = sys.stdout, sys.stderr
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(main, run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        sys.stdout, sys.stderr = so, se
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def test_the_command_line_refuses_them_in_one_line_with_exit_2_writing_nothing(tmp_path):
    cases, expected = [], []
    counters: dict[str, int] = {}
    for i, (key, kind, select) in enumerate(KEYS):
        n = counters[kind] = counters.get(kind, -1) + 1
        _, text = BAD[kind][n % len(BAD[kind])]
        args = [
            "model=local",
            "model.checkpoints=[/no/such/a,/no/such/b]",  # were the value let through, the run would fail on these
            *select,
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"merge.output_dir={tmp_path / 'out'}",
            f"hydra.run.dir={tmp_path / 'runs' / str(i)}",
            f"++{key}={text}",  # last: it wins over the defaults above when it is one of them
        ]
        cases.append(args)
        expected.append((key, text))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(MAIN), json.dumps(cases)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (key, text), (code, err) in zip(expected, results):
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (key, text, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (key, text, err)
        assert key in lines[0], (key, text, lines[0])
    assert not (tmp_path / "mlflow.db").exists()  # no tracking store was even opened
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("result.json")) and not list(tmp_path.rglob("merged"))


def test_merge_overwrite_no_leaves_an_existing_folder_untouched(tmp_path, tiny_trajectory):
    from tests.conftest import run_main

    out = tmp_path / "OUT"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own notes")
    a, b = tiny_trajectory.checkpoints[-2], tiny_trajectory.checkpoints[-1]
    proc = run_main(
        [
            "action=merge",
            "model=local",
            f"model.checkpoints=[{a},{b}]",
            "merge.weights=[0.5,0.5]",
            f"merge.output_dir={out}",
            "merge.overwrite=no",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: merge.overwrite must be true or false, got 'no'" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's own notes"


# -- structure: no import cycles, and validation loads nothing heavy ---------------------------------

PACKAGE = REPO / "src" / "ckptmerge"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at module level or inside functions (a lazy import is still an
    edge), leaving out ``if TYPE_CHECKING:`` blocks, which never run."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    me = _module_name(path)
    is_package = path.name == "__init__.py"

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                found.add(alias.name)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                anchor = me.split(".") if is_package else me.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")

    Visitor().visit(tree)
    edges = set()
    for name in found:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != me:
            edges.add(name)
    return edges


def test_the_package_has_no_import_cycle():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    # importing a module imports its packages' __init__ first: that edge is not a cycle of ours to break
    graph = {m: {d for d in _imports(p, modules) if not m.startswith(d + ".")} for m, p in files.items()}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


VALIDATE_ONLY = r"""
import json, sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from ckptmerge.cli import store_schema
from ckptmerge.config import config_from_dict
store_schema()
conf, cases = sys.argv[1], json.loads(sys.argv[2])
for overrides in cases:
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    config_from_dict(OmegaConf.to_container(cfg, resolve=True))
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_and_validating_the_config_loads_no_torch_and_no_extension_module():
    cases = [
        [],
        ["action=compare"],
        ["merge=fisher", "merge.floor=1e-6"],
        ["search/space=ema", "search.space.beta_max=0.9"],
        ["search=grid", "model=local", "model.checkpoints=[/a,/b]"],
        ["action=watch", "model=local", "model.checkpoints=[]", "watch.dir=/w"],
        ["runtime=ray", "runtime.workers=2", "runtime.address=auto"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", VALIDATE_ONLY, str(REPO / "conf"), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(json.loads(proc.stdout))
    heavy = {"torch", "transformers", "lm_eval", "skopt", "sklearn", "scipy", "numpy", "mlflow", "deepspeed", "ray"}
    assert not heavy & {m.split(".")[0] for m in loaded}
    extension_modules = {
        "ckptmerge.search.space",
        "ckptmerge.search.families",
        "ckptmerge.search.searchers",
        "ckptmerge.search.gp",
        "ckptmerge.merge.linear",
        "ckptmerge.merge.soups",
        "ckptmerge.merge.fisher",
        "ckptmerge.merge.regmean",
    }
    assert not extension_modules & loaded
    assert "ckptmerge.config" in loaded  # the check above looked at a process that did validate
