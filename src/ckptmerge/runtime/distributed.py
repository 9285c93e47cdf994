"""Ranks of a ``deepspeed`` launch: the process group, and rank 0's command channel to the others.

The entry point joins the group (:func:`init`) and makes one :class:`Channel` over it, which it
passes down to whatever takes part in the command flow (the resident model, the evaluation session).
Rank 0 runs the action (searcher, MLflow, writing, registry). Every other rank runs the worker's
``serve`` loop: it builds the same resident model and task suites, then waits for rank 0's commands: merge these
weights into your partition, load this written folder, evaluate this suite (lm-eval gathers the
results on rank 0), stop. A rank that dies makes the launcher end the others; a collective that
waits longer than ``runtime.timeout_s`` fails the run instead of hanging it.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Commands sent by rank 0
START, APPLY, LOAD, EVAL, STOP = "start", "apply", "load", "eval", "stop"


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 for a plain ``python``)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port on the loopback nobody listens on now (for a world of one's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(timeout_s: int, threads: int | None = None) -> Ranks:
    """Join (or, for a plain ``python``, form) the process group through DeepSpeed; once per process."""
    import torch

    from ckptmerge.errors import ConfigError

    try:
        import deepspeed
        from deepspeed.accelerator import get_accelerator
    except ImportError:
        raise ConfigError("runtime=deepspeed needs DeepSpeed: pip install -e '.[deepspeed]'") from None
    # A single process started without the launcher is a world of one.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    acc = get_accelerator()
    deepspeed.init_distributed(
        dist_backend=acc.communication_backend_name(), timeout=datetime.timedelta(seconds=timeout_s), verbose=False
    )
    import torch.distributed as dist

    local_size = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))
    ranks = Ranks(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=local_size,
    )
    if acc.device_name() == "cpu":
        # The local ranks share the cores; oversubscribing them slows every rank down.
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, local_size)))
    else:
        acc.set_device(ranks.local_rank)
    log.info(
        "Rank %d of %d (local %d of %d) on %s, backend %s",
        ranks.rank,
        ranks.world_size,
        ranks.local_rank,
        local_size,
        acc.device_name(),
        acc.communication_backend_name(),
    )
    return ranks


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (a small picklable command)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Channel:
    """The command flow of one launch: rank 0 sends, every other rank receives (in its ``serve`` loop).

    Made once by the entry point, after :func:`init`, and passed to what takes part in the flow. Code
    shared by all ranks calls :meth:`send` as it goes; only rank 0 of a world larger than one actually
    sends (the others are following commands already), so callers need not ask who they are.
    """

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.closed = False

    def send(self, command: str, *args: Any) -> None:
        if self.ranks.world_size == 1 or not self.ranks.is_main or self.closed:
            return
        broadcast((command, *args))

    def receive(self) -> tuple[str, tuple[Any, ...]]:
        """A rank other than 0: the next command from rank 0."""
        msg = broadcast(None)
        return msg[0], tuple(msg[1:])

    def close(self) -> None:
        """Release the other ranks, whether or not they were started (they stop either way)."""
        self.send(STOP)
        self.closed = True


def shutdown() -> None:
    """Every rank, once rank 0 said stop: meet at a barrier, then tear the process group down.

    A rank that exits with its group still up leaves gloo's threads to the C++ runtime's exit, which
    can abort the process ("terminate called without an active exception", exit 250 from the
    launcher) after all the work was done and registered. The barrier keeps a rank from closing its
    connections while another is still reading the last command.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
