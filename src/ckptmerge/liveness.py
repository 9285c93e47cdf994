"""Whether a process of this host is still running: how ckptmerge tells a crashed writer or search from a live one."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while process ``pid`` of this host exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
