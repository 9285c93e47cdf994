"""Small real checkpoints for I/O tests (tiny GPT-NeoX models written with save_pretrained), a read-only
look into a search's sqlite store while it runs, and killing a run at a chosen moment."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch


def tiny_neox(
    folder: Path,
    seed: int = 0,
    hidden: int = 16,
    layers: int = 2,
    dtype=torch.float32,
    safe: bool = True,
    shard: str | None = None,
) -> Path:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=32,
    )
    model = GPTNeoXForCausalLM(cfg).to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    if not safe:  # a legacy pytorch_model.bin (transformers 5 only writes safetensors)
        from safetensors.torch import load_file

        st = Path(folder) / "model.safetensors"
        torch.save(load_file(str(st)), Path(folder) / "pytorch_model.bin")
        st.unlink()
    return Path(folder)


def query_store(db: Path, sql: str) -> list[tuple]:
    """Rows from the sqlite store ``db``, read directly and read-only: an MLflow client here would race
    the running search (or watcher) to create the tables. A missing or half-created store has no rows."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def count_finished_trials(db: Path) -> int:
    """FINISHED trial runs in the sqlite store ``db`` (read-only, see :func:`query_store`)."""
    rows = query_store(
        db,
        "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
        "where t.key = 'ckptmerge.kind' and t.value = 'trial' and r.status = 'FINISHED'",
    )
    return rows[0][0] if rows else 0


class RunningTrial(NamedTuple):
    run_id: str
    index: int | None  # its ``trial`` param; None in the moment between the run's creation and its params


def running_trial(db: Path) -> RunningTrial | None:
    """The trial child run now RUNNING in the sqlite store ``db`` (read-only), if any."""
    rows = query_store(
        db,
        "select r.run_uuid, p.value from runs r join tags t on r.run_uuid = t.run_uuid "
        "left join params p on p.run_uuid = r.run_uuid and p.key = 'trial' "
        "where t.key = 'ckptmerge.kind' and t.value = 'trial' and r.status = 'RUNNING'",
    )
    if not rows:
        return None
    run_id, index = rows[0]
    return RunningTrial(run_id, None if index is None else int(index))


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, poll: float = 0.1) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (checked every ``poll`` seconds), then reap it. If it
    ended first it is not killed: the caller asserts ``proc.returncode == -signal.SIGKILL`` to tell the
    two apart. Not ready within ``timeout`` seconds: it is killed all the same and the test fails here."""
    deadline = time.time() + timeout
    while proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        if time.time() > deadline:
            proc.kill()
            proc.wait(timeout=60)
            raise AssertionError(f"the run was not ready to be killed within {timeout:.0f} s")
        time.sleep(poll)
    proc.wait(timeout=60)
