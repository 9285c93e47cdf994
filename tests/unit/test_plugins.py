"""A plugin module that fails while it is imported is one line naming the module and the error."""

from __future__ import annotations

import sys

import pytest

from ckptmerge.config import load_plugins
from ckptmerge.errors import ConfigError
from ckptmerge.merge.registry import METHODS
from tests.conftest import run_main

BROKEN = {
    "raises_at_import": ("raise RuntimeError('no GPU visible')\n", "RuntimeError: no GPU visible"),
    "bad_syntax": ("def f(:\n    pass\n", "SyntaxError: "),
    "second_linear": (
        "from ckptmerge.merge.registry import METHODS\n@METHODS.register('linear')\nclass Mine:\n    pass\n",
        "ValueError: merge method 'linear' registered twice",
    ),
    "exits_at_import": ("import sys\nsys.exit(0)\n", "called sys.exit(0) while being imported"),
    "imports_a_missing_module": ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named"),
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a plugin beside the command is found, as from the command line
    for name, (source, _) in BROKEN.items():
        (tmp_path / f"{name}.py").write_text(source)
    yield tmp_path
    for name in BROKEN:
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("module", sorted(BROKEN))
def test_a_plugin_that_fails_at_import_is_one_config_error_naming_it(plugin_dir, module):
    linear = METHODS.get("linear")
    with pytest.raises(ConfigError) as e:
        load_plugins(["os", module])
    msg = str(e.value)
    assert msg.startswith(f"plugins[1]: {module}: "), msg
    assert BROKEN[module][1] in msg and "\n" not in msg
    assert METHODS.get("linear") is linear  # the built-in method is still the one registered


def test_a_missing_plugin_keeps_its_message(plugin_dir):
    with pytest.raises(ConfigError, match=r"^plugins\[0\]: cannot import 'no_such_plugin_xyz'"):
        load_plugins(["no_such_plugin_xyz"])


def test_a_plugin_that_exits_at_import_ends_the_command_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    proc = run_main(["plugins=[quits]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: plugins[0]: quits: called sys.exit(0) while being imported"]
    assert not (tmp_path / "run" / "result.json").exists() and not (tmp_path / "mlflow.db").exists()
