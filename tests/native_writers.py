"""Training-native checkpoints of transformers folders, written by the libraries that write them in training:
DeepSpeed ZeRO (``engine.save_checkpoint``, two gloo ranks on the CPU accelerator, started by the
``deepspeed`` launcher) and PyTorch Distributed Checkpoints (``torch.distributed.checkpoint.save``).

Run as a script under the launcher: ``deepspeed --num_gpus 2 tests/native_writers.py 2,3 OUT HF_FOLDER...``
writes ``OUT/zero<stage>/<folder name>/global_step<N>/`` and ``.../<folder name>/latest`` for each stage
and folder, from the model's weights as loaded (fp32), with an AdamW optimizer and no step taken, so the
fp32 masters are the folder's weights exactly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def write_zero(
    stages: tuple[int, ...], out: Path, folders: list[Path], nproc: int = 2, timeout: int = 900
) -> dict[int, list[Path]]:
    """ZeRO checkpoints of ``folders`` for each of ``stages``, in ``out/zero<stage>/<folder name>`` (with
    ``latest``), written by one launch of ``nproc`` ranks."""
    from ckptmerge.runtime.distributed import free_port

    launcher = Path(sys.executable).parent / "deepspeed"
    cmd = [str(launcher), "--num_gpus", str(nproc), "--master_port", str(free_port()), __file__]
    cmd += [",".join(map(str, stages)), str(out), *map(str, folders)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {s: [out / f"zero{s}" / f.name for f in folders] for s in stages}


def write_dcp(
    folder: Path,
    out: Path,
    rename: Callable[[str], str] = lambda k: k,
    optimizer: bool = True,
    model: bool = True,
) -> Path:
    """A DCP of ``folder``'s weights as a training loop saves it: ``{"model": ..., "optimizer": ...}``
    (so names carry a ``model.`` prefix), tensor names passed through ``rename``; one process."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sd = {rename(k): v.detach().clone() for k, v in m.state_dict().items()}
    state: dict = {}
    if model:
        state["model"] = sd
    if optimizer:  # moments the size of the weights: never to be read
        state["optimizer"] = {"state": {k: {"exp_avg": torch.zeros_like(v)} for k, v in sd.items()}}
    dcp.save(state, checkpoint_id=str(out), no_dist=True)
    return out


def write_dcp_sharded(folder: Path, out: Path, nproc: int = 2, timeout: int = 600) -> Path:
    """A DCP of ``folder``'s weights as FSDP2 or torchtitan saves it: ``nproc`` gloo ranks (CPU), every
    weight a DTensor sharded on dim 0 over a 1-D device mesh (uneven shards where the rows do not
    divide), each rank writing its own shards (``__R_0.distcp``), with optimizer moments beside them."""
    from ckptmerge.runtime.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_port", str(free_port()), __file__, "dcp-sharded", str(out), str(folder)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


def _dcp_sharded_main(out: Path, folder: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from transformers import AutoModelForCausalLM

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sd = {
        # FSDP2's layout: dim-0 shards; a 0-d buffer cannot be sharded and is replicated (saved once)
        k: distribute_tensor(v.detach().clone(), mesh, [Shard(0) if v.dim() else Replicate()])
        for k, v in model.state_dict().items()
    }
    optim = {
        "state": {
            k: {"exp_avg": distribute_tensor(torch.zeros_like(v.full_tensor()), mesh, v.placements)}
            for k, v in sd.items()
        }
    }
    dcp.save({"model": sd, "optimizer": optim}, checkpoint_id=str(out))
    dist.barrier()
    dist.destroy_process_group()


def _step(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else 0


def _main(stages: list[int], out: Path, folders: list[Path]) -> None:
    import deepspeed
    from transformers import AutoModelForCausalLM

    deepspeed.init_distributed(dist_backend="gloo")
    for stage, folder in ((s, f) for s in stages for f in folders):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        config = {
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,
        }
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        engine.save_checkpoint(str(out / f"zero{stage}" / folder.name), tag=f"global_step{_step(folder.name)}")
        del engine, opt, model
    # Tear gloo down before exit: left to the C++ runtime's exit it can abort the process
    # ("terminate called without an active exception"; see ckptmerge.runtime.distributed.shutdown).
    from ckptmerge.runtime.distributed import shutdown

    shutdown()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    if args[0] == "dcp-sharded":
        _dcp_sharded_main(Path(args[1]), Path(args[2]))
        sys.exit(0)
    _main([int(s) for s in args[0].split(",")], Path(args[1]), [Path(a) for a in args[2:]])
