"""ckptmerge from its checkout: ``python src/main.py [OVERRIDES]`` runs the same command as ``ckptmerge``
and ``python -m ckptmerge`` (:func:`ckptmerge.cli.main`, the one module that touches Hydra), with this
checkout's ``src/ckptmerge`` and ``conf/``.

    python src/main.py                                   # search λ on the embedded trajectory
    python src/main.py model=local 'model.checkpoints=[A,B]' 'eval.tasks=[T]' eval.include_path=DIR
    python src/main.py action=merge 'merge.weights=[0.3,0.7]' merge.output_dir=DIR
    python src/main.py action=watch model=local watch.dir=DIR 'eval.tasks=[T]'   # beside a training run
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without installing

from ckptmerge.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
