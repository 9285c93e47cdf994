"""Publishing a folder: never replace or remove what this process did not write."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from ckptmerge.checkpoints.atomic import OWNER_FILE, atomic_folder, folder_owner, rename_noreplace
from ckptmerge.errors import CheckpointError


def test_a_folder_that_appears_during_the_write_is_left_as_it_was(tmp_path):
    """The data-loss case: the target is created by someone else after the early check passed."""
    target = tmp_path / "out"
    with pytest.raises(CheckpointError, match="already exists"):
        with atomic_folder(target) as tmp:
            (tmp / "weights.bin").write_text("ours")
            target.mkdir()
            (target / "notes.txt").write_text("theirs")
    assert (target / "notes.txt").read_text() == "theirs"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # our partial folder is gone


def test_an_empty_folder_that_appears_is_not_replaced_either(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(CheckpointError, match="already exists"):
        with atomic_folder(target) as tmp:
            (tmp / "w").write_text("ours")
            target.mkdir()
    assert target.is_dir() and list(target.iterdir()) == []


def test_two_writers_racing_for_one_target_one_wins_and_keeps_its_content(tmp_path):
    target = tmp_path / "out"
    both_written = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def write(name: str) -> None:
        try:
            with atomic_folder(target) as tmp:
                (tmp / "who").write_text(name)
                both_written.wait(timeout=10)
            outcome[name] = "won"
        except CheckpointError as e:
            outcome[name] = str(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    winners = [n for n, o in outcome.items() if o == "won"]
    assert len(winners) == 1, outcome
    loser = "b" if winners == ["a"] else "a"
    assert "already exists" in outcome[loser]
    assert (target / "who").read_text() == winners[0]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_same_owner_replaces_its_own_folder_and_no_one_else_does(tmp_path):
    target = tmp_path / "out"
    with atomic_folder(target, owner="search:r1") as tmp:
        (tmp / OWNER_FILE).write_text(json.dumps({"owner": "search:r1", "try": 1}))
    assert folder_owner(target) == "search:r1"
    with pytest.raises(CheckpointError, match=r"already exists \(written by search:r1\)"):
        with atomic_folder(target, owner="search:r2") as tmp:
            (tmp / OWNER_FILE).write_text(json.dumps({"owner": "search:r2"}))
    with atomic_folder(target, owner="search:r1") as tmp:
        (tmp / OWNER_FILE).write_text(json.dumps({"owner": "search:r1", "try": 2}))
    assert json.loads((target / OWNER_FILE).read_text())["try"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_partial_folders_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f".out.partial-{host}-{dead_pid}-abc123"
    live = tmp_path / f".out.partial-{host}-{os.getppid()}-def456"
    other_host = tmp_path / f".out.partial-elsewhere-{dead_pid}-ghi789"
    unrelated = tmp_path / ".out.partial-notes"
    for p in (stale, live, other_host, unrelated):
        p.mkdir()
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "w").write_text("x")
    assert not stale.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()


def test_rename_noreplace_refuses_an_existing_file(tmp_path):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.mkdir()
    dst.write_text("keep")
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert dst.read_text() == "keep" and src.is_dir()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 256 KiB tmpfs (needs root and mount permission; skipped where the sandbox refuses)."""
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_disk_that_fills_up_mid_write_is_one_line_and_leaves_nothing(tiny_filesystem):
    target = tiny_filesystem / "out"
    with pytest.raises(CheckpointError, match="the disk filled up while writing"):
        with atomic_folder(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"\0" * (1 << 20))  # 1 MiB into 256 KiB: real ENOSPC
    assert list(tiny_filesystem.iterdir()) == []


def test_an_input_checkpoint_or_its_parent_is_never_an_output(tmp_path):
    from ckptmerge.checkpoints.atomic import refuse_inputs

    inputs = [tmp_path / "ckpts" / "step1", tmp_path / "ckpts" / "step2"]
    for f in inputs:
        f.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is the input checkpoint"):
        refuse_inputs(tmp_path / "ckpts" / "step2", inputs)
    with pytest.raises(CheckpointError, match="is a folder holding the input checkpoint"):
        refuse_inputs(tmp_path / "ckpts", inputs)
    refuse_inputs(tmp_path / "ckpts" / "merged", inputs)  # beside them is fine


@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_a_published_folder_has_the_modes_the_umask_gives_a_plain_mkdir(tmp_path, umask, folder_mode, file_mode):
    """Not mkdtemp's owner-only 0700: a serving account must be able to read a registered merge."""
    from ckptmerge.interop import update_card
    from ckptmerge.interop.facts import MergeFacts

    old = os.umask(umask)
    try:
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
        update_card(
            tmp_path / "out",
            MergeFacts(
                checkpoints=tuple(
                    {"name": n, "hub": False, "model": f"/ckpt/{n}", "folder": f"/ckpt/{n}"} for n in "ab"
                ),
                weights={"a": 0.5, "b": 0.5},
            ),
        )
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert out.stat().st_mode & 0o777 == folder_mode
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "model.safetensors": file_mode,
        "README.md": file_mode,
    }
