"""Keep secrets out of MLflow: tokens and keys never appear in logged params, tags or artifacts.

Two kinds are removed from every string ckptmerge logs: passwords in URIs
(``postgresql://user:pw@host`` → ``postgresql://user:***@host``) and the values of environment
variables whose names say they are secret (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
``MLFLOW_TRACKING_PASSWORD``, ...), wherever they occur.
"""
from __future__ import annotations

import os
import re

_URI_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
MASK = "***"


def secret_values() -> list[str]:
    """Values of secret-looking environment variables (long enough not to mask ordinary words)."""
    for _ in range(5):
        try:
            # Other threads (MLflow's telemetry) may change os.environ while it is read; copy it first.
            env = dict(os.environ.copy())
            break
        except (KeyError, RuntimeError):
            continue
    else:
        env = {}
    vals = {v for k, v in env.items() if _SECRET_NAME.search(k) and v and len(v) >= 6}
    return sorted(vals, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with URI passwords and secret environment values masked."""
    if not text:
        return text
    out = _URI_PASSWORD.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    for v in secret_values():
        if v in out:
            out = out.replace(v, MASK)
    return out
