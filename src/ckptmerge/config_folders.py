"""Where Hydra finds ckptmerge's configs: the packaged ones, and the folders a user adds.

The repository keeps its configs in ``conf/`` at the top level; a wheel carries the same files as
``ckptmerge/conf/`` (``setup.py`` copies them at build time). A user adds presets of their own with
Hydra's ``--config-dir DIR`` or ``hydra.searchpath=[...]``: their ``model/``, ``eval/``, ``search/``
files are options beside the packaged ones. Nothing here imports Hydra; ``ckptmerge.cli`` does.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ckptmerge.errors import ConfigError


def conf_dir() -> Path:
    """Hydra's primary config folder: ``ckptmerge/conf/`` in an installed wheel, else the ``conf/`` of the
    checkout this package sits in (``src/ckptmerge/``: ``python src/main.py``, an editable install)."""
    package = Path(__file__).resolve().parent
    packaged = package / "conf"
    return packaged if (packaged / "config.yaml").is_file() else package.parent.parent / "conf"


def _option_values(argv: list[str], *names: str) -> list[str]:
    """The values given to a Hydra command-line option: ``--config-dir DIR``, ``--config-dir=DIR``, ``-cd DIR``."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                out.append(value)
            elif i + 1 < len(argv):
                out.append(argv[i + 1])
    return out


def search_path_folder(entry: str) -> Path | None:
    """A Hydra search path entry (``file://DIR``, ``DIR``, ``pkg://module.path``) as a local folder; None
    when it is not one (another scheme, a package that does not import, a zipped one)."""
    scheme, sep, path = entry.partition("://")
    if not sep:
        return Path(entry)  # Hydra reads an entry without a scheme as file://
    if scheme == "file":
        return Path(path)
    if scheme == "pkg":
        try:
            found = importlib.resources.files(path.replace("/", ".").rstrip("."))
        except (ImportError, TypeError, ValueError):
            return None
        return found if isinstance(found, Path) else None
    return None


def config_folders(argv: list[str]) -> list[Path] | None:
    """The folders Hydra takes config group options from for this command line, the primary one first:
    the packaged configs (or ``--config-path``), then the user's ``--config-dir`` and ``hydra.searchpath``
    folders. None when one of them cannot be listed here (only Hydra can then tell which options exist).

    Raises :class:`ConfigError` for a ``--config-dir`` that is not a folder."""
    primary = conf_dir()
    for given in _option_values(argv, "--config-path", "-cp"):
        if not Path(given).is_absolute():
            return None  # relative to the module that declares the Hydra app: Hydra's to resolve
        primary = Path(given)
    extra = [Path(d).expanduser() for d in _option_values(argv, "--config-dir", "-cd")]
    for folder in extra:
        if not folder.is_dir():
            raise ConfigError(f"--config-dir {folder} is not a folder")
    for arg in argv:
        key, eq, value = arg.lstrip("+~").partition("=")
        if eq and key == "hydra.searchpath":
            for entry in value.strip().strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry:
                    found = search_path_folder(entry)
                    if found is None:
                        return None
                    extra.append(found)
    return [primary, *extra]
