"""``python -m ckptmerge [OVERRIDES]``: the same command as ``ckptmerge`` (and a checkout's ``python src/main.py``).

The form launchers use: ``deepspeed --module ckptmerge runtime=deepspeed ...``, and the Trainer callback
starts ``sys.executable -m ckptmerge action=watch ...`` so that the watcher is the installed package."""

from ckptmerge.cli import main

if __name__ == "__main__":  # not on import (a spawned worker process imports its parent's main module)
    main()
