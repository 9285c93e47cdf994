"""Build hook: the repository's ``conf/`` (Hydra's configs, kept at the top level where users and docs
find them) travels in the wheel as ``ckptmerge/conf/``. Everything else is in pyproject.toml.

setuptools' declarative options cannot map a folder outside ``src/`` into a package (``package-data``
is relative to the package), so ``build_py`` copies it; ``MANIFEST.in`` puts ``conf/`` in the sdist, so
that a wheel built from the sdist has it too. An editable install copies nothing: there
``ckptmerge.config_folders.conf_dir()`` reads the checkout's ``conf/`` in place.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (CONF / "config.yaml").is_file():
            raise SystemExit(f"error: {CONF} has no config.yaml; ckptmerge cannot be built without its configs")
        for src in sorted(CONF.rglob("*.yaml")):
            dst = Path(self.build_lib) / "ckptmerge" / "conf" / src.relative_to(CONF)
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))


setup(cmdclass={"build_py": BuildPyWithConf})
