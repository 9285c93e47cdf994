"""Which config folders a command line adds (``--config-dir``, ``hydra.searchpath``), as the check of
group options before Hydra reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptmerge.config_folders import conf_dir, config_folders, search_path_folder
from ckptmerge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_reads_its_own_conf():
    assert conf_dir() == REPO / "conf" and (conf_dir() / "config.yaml").is_file()


def test_no_folder_added_leaves_the_packaged_configs_alone():
    assert config_folders(["model=local", "search.budget=4"]) == [conf_dir()]


@pytest.mark.parametrize(
    "form",
    [
        ["--config-dir", "{d}"],
        ["--config-dir={d}"],
        ["-cd", "{d}"],
        ["hydra.searchpath=[{d}]"],
        ["hydra.searchpath=[file://{d}]"],
        ["+hydra.searchpath=['file://{d}']"],
    ],
    ids=[
        "--config-dir DIR",
        "--config-dir=DIR",
        "-cd DIR",
        "searchpath DIR",
        "searchpath file://",
        "+searchpath quoted",
    ],
)
def test_each_way_to_add_a_folder(tmp_path, form):
    argv = [a.format(d=tmp_path) for a in form] + ["model=mine"]
    assert config_folders(argv) == [conf_dir(), tmp_path]


def test_several_folders_keep_their_order(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    argv = ["-cd", str(a), f"hydra.searchpath=[file://{b},{c}]"]
    assert config_folders(argv) == [conf_dir(), a, b, c]


def test_a_config_dir_that_is_not_a_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--config-dir .*/missing is not a folder$"):
        config_folders(["--config-dir", str(tmp_path / "missing")])


def test_a_package_search_path_is_its_folder_and_an_unknown_one_is_left_to_hydra():
    assert search_path_folder("pkg://ckptmerge.evaluation") == REPO / "src" / "ckptmerge" / "evaluation"
    assert search_path_folder("pkg://ckptmerge/evaluation/") == REPO / "src" / "ckptmerge" / "evaluation"
    assert config_folders(["hydra.searchpath=[pkg://no_such_package_here]"]) is None
    assert config_folders(["hydra.searchpath=[structured://x]"]) is None


def test_config_path_replaces_the_primary_folder(tmp_path):
    assert config_folders(["--config-path", str(tmp_path)]) == [tmp_path]
    assert config_folders(["-cp", "relative/to/the/app"]) is None  # resolved by Hydra against the module
