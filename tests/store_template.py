"""An empty MLflow sqlite store, made once per test session and copied to where a test's command would
otherwise create a new one.

MLflow makes a new sqlite store by running every one of its schema migrations (alembic), about 6 s of
CPU per store on the loaded CI machine, and nearly every end-to-end test starts from a new store: the
suite paid that once per test, several minutes in all. A copy of an already migrated, empty store is
what MLflow itself would have made, and the tool opens it as it opens any user's existing store (schema
check, then its experiment). Tests of what happens to a store that does not exist yet ask for a new
one (``fresh_store=True`` in ``run_main`` and ``start_main``), and the README's first command, run as
a user runs it in ``e2e_search``, still creates its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

_FOLDER: Path | None = None  # set by conftest's session fixture; None: no seeding (a plain copy of the old way)
_SQLITE = "tracking.uri=sqlite:///"


def use_folder(folder: Path) -> None:
    """Where the session keeps the template (shared by the xdist workers: the folder above their own)."""
    global _FOLDER
    _FOLDER = folder


def _template() -> Path | None:
    """The migrated, empty store, made on first use by one process while the others wait on a lock."""
    if _FOLDER is None:
        return None
    target = _FOLDER / "mlflow-template.db"
    if target.is_file():
        return target
    with (_FOLDER / ".mlflow-template.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            staging = _FOLDER / f".mlflow-template-{os.getpid()}.db"
            staging.unlink(missing_ok=True)
            # the store's default artifact root is only used for the Default experiment's location, which
            # the tool never uses (it creates its own experiment, located by the run's own store)
            store = SqlAlchemyStore(f"sqlite:///{staging}", str(_FOLDER / "mlruns-template"))
            store.search_experiments()
            store.engine.dispose()
            os.replace(staging, target)
    return target


def seed_store(args: list[str], cwd: Path) -> None:
    """Copy the template to the sqlite path ``tracking.uri`` names in ``args``, where no file is there yet
    and its folder exists (a missing folder is the tool's error to report, not ours to hide)."""
    uri = next((a for a in reversed(args) if a.startswith(_SQLITE)), None)
    if uri is None:
        return
    path = Path(uri[len(_SQLITE) :])
    seed_file(path if path.is_absolute() else cwd / path)


def seed_file(path: Path) -> None:
    """The template copied to the sqlite file ``path``, where there is none yet and its folder exists."""
    if path.exists() or not path.parent.is_dir():
        return
    template = _template()
    if template is not None:
        shutil.copyfile(template, path)
