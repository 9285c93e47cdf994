"""Publishing a folder atomically, and never touching a folder this process did not write.

A folder is written under a hidden name beside its target (``.NAME.partial-HOST-PID-*``) and renamed
into place only when complete. Without ``overwrite`` the rename itself refuses an existing target
(``renameat2(RENAME_NOREPLACE)`` on Linux; elsewhere an exclusive ``mkdir`` claims the name first), so
two writers racing for one target cannot replace each other: the second one fails with one line and
its own partial folder is removed. A folder we publish records its *owner* (e.g. ``search:RUN_ID``) in
``ckptmerge.json``; a rerun of the same search recognises its own earlier output and replaces it, and
nothing else is ever replaced or removed unless the user set ``overwrite``. Leftover partial folders
of a process that died on this host are recognised by their name and removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ckptmerge.errors import CheckpointError
from ckptmerge.liveness import process_alive

log = logging.getLogger(__name__)

OWNER_FILE = "ckptmerge.json"  # written into every merged folder; its "owner" says who wrote it
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def umask_mode(mode: int) -> int:
    """``mode`` as the process's umask leaves it for a plain ``mkdir`` (0o777) or ``open`` (0o666): 0o755 /
    0o644 under umask 022. ``mkdtemp`` and ``mkstemp`` make owner-only entries whatever the umask, which
    would keep a published merge from the account that serves it."""
    mask = os.umask(0o022)  # reading the umask sets it: set it straight back
    os.umask(mask)
    return mode & ~mask


def folder_owner(folder: Path) -> str | None:
    """The ``owner`` recorded in a folder we wrote, or None (not ours, or not a folder)."""
    try:
        owner = json.loads((Path(folder) / OWNER_FILE).read_text()).get("owner")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _exists_message(target: Path, key: str) -> str:
    by = folder_owner(target)
    who = f" (written by {by})" if by else ""
    return f"{key}={target} already exists{who}; choose another folder or set merge.overwrite=true"


_PID_DIGITS = 7  # Linux's largest pid_max (4194304): the partial folder's name fits whichever pid writes it
_MKDTEMP_CHARS = 8  # the random part tempfile.mkdtemp adds


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system at ``folder`` (or its nearest existing parent) takes."""
    for f in (folder, *folder.parents):
        if f.exists():
            try:
                return int(os.pathconf(f, "PC_NAME_MAX"))
            except (OSError, ValueError):
                break
    return 255


def check_name_fits(target: Path, key: str = "merge.output_dir") -> None:
    """Fail when ``target``'s last name, or the hidden ``.NAME.partial-HOST-PID-XXXXXXXX`` folder written
    beside it, is longer than the file system allows: otherwise that shows only when the merge is written,
    after every trial."""
    target = Path(target)
    limit = _name_max(target.parent)
    name = os.fsencode(target.name)
    overhead = len(os.fsencode(f"{_partial_prefix(Path('x'))}{socket.gethostname()}-")) - 1
    overhead += _PID_DIGITS + 1 + _MKDTEMP_CHARS
    if len(name) + overhead > limit:
        raise CheckpointError(
            f"{key}={target}: its last name is {len(name)} bytes, and the hidden folder written beside it "
            f"while the merge is written (.NAME.partial-{socket.gethostname()}-PID-XXXXXXXX) would pass the "
            f"file system's limit of {limit} bytes a name; choose a last name of at most {limit - overhead} bytes"
        )


def check_target(target: Path, overwrite: bool, key: str = "merge.output_dir", owner: str | None = None) -> None:
    """Fail before any work when ``target`` exists and may not be replaced, or cannot be created, or its
    name (with the hidden partial folder's) is too long for the file system.

    An existing target may be replaced when ``overwrite`` is set or when it records ``owner`` (the same
    search writing again after a crash). This is the early check; the rename checks again.
    """
    target = Path(target)
    check_name_fits(target, key)
    if target.exists() and not overwrite and not (owner and folder_owner(target) == owner):
        raise CheckpointError(_exists_message(target, key))
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{key}={target}: cannot create parent folder ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{key}={target}: parent folder is not writable")


def refuse_inputs(target: Path, inputs: list[Path], key: str = "merge.output_dir") -> None:
    """Fail when ``target`` is an input folder or holds one: replacing it (``merge.overwrite=true``) would
    delete a checkpoint the merge reads, which no flag should allow."""
    target = Path(target).resolve()
    for folder in inputs:
        folder = Path(folder).resolve()
        if folder == target or target in folder.parents:
            raise CheckpointError(
                f"{key}={target} is {'' if folder == target else 'a folder holding '}the input "
                f"checkpoint {folder}; write the merge somewhere else"
            )


def _libc_renameat2() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError, TypeError):
        return None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, raising ``FileExistsError`` when ``dst`` exists, atomically."""
    fn = _libc_renameat2()
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)  # type: ignore[operator]
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    # No renameat2 here (or not on this filesystem): claim the name with an exclusive mkdir, then
    # replace the empty folder we own (POSIX rename replaces an empty directory atomically).
    os.mkdir(dst)
    try:
        os.rename(src, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(dst)
        raise


def _partial_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def _remove_dead_partials(target: Path) -> None:
    """Remove hidden partial folders of ``target`` left by a process of this host that has died."""
    host = socket.gethostname()
    for p in target.parent.glob(_partial_prefix(target) + "*"):
        parts = p.name[len(_partial_prefix(target)) :].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue  # another host's, or a name we did not make
        if process_alive(int(parts[1])):
            continue  # still running: its write is in progress
        log.info("Removing %s, left by a write that did not finish", p)
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(
    target: Path, overwrite: bool = False, owner: str | None = None, key: str = "merge.output_dir"
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``, on error it is removed.

    An existing ``target`` is replaced only with ``overwrite`` or when it records ``owner``; otherwise
    the rename fails and nothing but our own temporary folder is removed.
    """
    target = Path(target).resolve()
    check_target(target, overwrite, key, owner)
    _remove_dead_partials(target)
    tmp = Path(
        tempfile.mkdtemp(prefix=f"{_partial_prefix(target)}{socket.gethostname()}-{os.getpid()}-", dir=target.parent)
    )
    try:
        os.chmod(tmp, umask_mode(0o777))  # published as a mkdir'd folder would be, as save_pretrained does
        yield tmp
        replace = target.exists() and (overwrite or (owner is not None and folder_owner(target) == owner))
        if replace:
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                rename_noreplace(tmp, target)
            except FileExistsError:
                raise CheckpointError(_exists_message(target, key)) from None
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk filled up while we wrote: say so in one line
            raise CheckpointError(
                f"{key}={target}: the disk filled up while writing ({e.strerror}); nothing was "
                "written, the partial folder is removed"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
