"""Keep secrets out of MLflow and local outputs: tokens and keys never appear in logged params, tags
or artifacts, nor in what ckptmerge prints (stdout, stderr, logs) or writes (``result.json``,
``compare.json``, the Hydra run folder's ``.hydra/*.yaml``).

Two kinds are removed from every string ckptmerge logs: passwords in URIs
(``postgresql://user:pw@host`` → ``postgresql://user:***@host``) and the values of environment
variables whose names say they are secret (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
``MLFLOW_TRACKING_PASSWORD``, ...), wherever they occur.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

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


def redact_data(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with every string :func:`redact`-ed.

    Structured rather than on the serialised text: a secret that JSON or YAML escapes (quotes,
    backslashes) is still found, and a mask never changes the document's structure.
    """
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {redact(k) if isinstance(k, str) else k: redact_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_data(v) for v in obj]
    return obj


def redact_yaml(text: str) -> str:
    """A YAML document with its secrets masked; unchanged (byte for byte) when it holds none.

    Masking the values (not the text) keeps it loadable: a bare ``***`` would read as a YAML alias.
    """
    if redact(text) == text:
        return text
    import yaml

    try:
        return yaml.safe_dump(redact_data(yaml.safe_load(text)), sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # not plain YAML after all: masked as text (a secret never stays)
        return redact(text)


def has_uri_password(text: str) -> bool:
    return bool(_URI_PASSWORD.search(text or ""))


def uri_password_keys(obj: Any, path: str = "") -> list[str]:
    """Dotted keys of the strings in ``obj`` that hold a URI with a password (``tracking.uri``)."""
    if isinstance(obj, str):
        return [path or "value"] if has_uri_password(obj) else []
    if isinstance(obj, Mapping):
        return [k for key, v in obj.items() for k in uri_password_keys(v, f"{path}.{key}" if path else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in uri_password_keys(v, f"{path}[{i}]")]
    return []


def credentials_warning(keys: list[str]) -> str:
    """The one line that says where credentials belong instead of a URI."""
    return (
        f"warning: {', '.join(keys)} has a password in its URI; ckptmerge masks it in what it prints and "
        "writes, but credentials belong in environment variables: MLFLOW_TRACKING_USERNAME / "
        "MLFLOW_TRACKING_PASSWORD (or the store's own, e.g. PGPASSWORD)"
    )
