"""The ``ckptmerge`` console script: the same as ``python src/main.py`` from the checkout it was installed from.

``src/main.py`` is the one module that touches Hydra and it reads ``conf/`` next to it, so the script
runs that file (an editable install, ``pip install -e .``, keeps both where they are).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main_script() -> Path:
    return Path(__file__).resolve().parent.parent / "main.py"


def main() -> None:
    script = main_script()
    if not script.is_file() or not (script.parent.parent / "conf").is_dir():
        print(
            f"error: the ckptmerge command runs {script} with the conf/ folder beside src/; install the project from "
            f"its checkout with pip install -e . (or run python src/main.py there)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")
