"""The resident model partitioned over DeepSpeed ranks (ZeRO stage 3), merged in place partition by partition.

The model is built from its config inside ``deepspeed.zero.Init``, so no rank ever holds it whole:
each parameter is split into equal flat partitions as it is created, rank r keeping elements
``[r·P, (r+1)·P)`` of the flattened tensor. A trial's merge on rank r reads exactly those elements of
every checkpoint tensor (zero-copy views of the memory-mapped files) and writes them into the rank's
partition; the first "merge" (the newest checkpoint alone) is the load. Forward passes gather each
layer's parameters from all ranks as DeepSpeed's hooks need them, and release them after.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet
from ckptmerge.errors import CheckpointError, ConfigError
from ckptmerge.resident.base import ResidentModel, loading, resolve_dtype
from ckptmerge.runtime.distributed import APPLY, LOAD, Channel

log = logging.getLogger(__name__)


def deepspeed_config(dtype: torch.dtype, override_path: str | None) -> dict[str, Any]:
    """ZeRO-3 for inference: every parameter partitioned (no small ones kept whole on every rank, so a
    merge written into the partitions is what the next forward gathers); a user JSON overrides keys."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "fp16": {"enabled": dtype == torch.float16},
        "bf16": {"enabled": dtype == torch.bfloat16},
    }
    if override_path:
        path = Path(override_path).expanduser()
        try:
            user = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"runtime.deepspeed_config does not exist: {override_path}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"runtime.deepspeed_config {override_path} is not valid JSON: {e}") from None
        cfg = _deep_merge(cfg, user)
    stage = cfg.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ConfigError(
            f"runtime.deepspeed_config sets zero_optimization.stage={stage}; the resident model needs stage 3"
        )
    return cfg


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _model_class(config: Any, folder: Path, trust_remote_code: bool) -> Any:
    """The causal-LM class for ``config``, imported before ``zero.Init`` patches tensor creation (an
    import inside it, e.g. of torch._dynamo, fails)."""
    import importlib

    for module in ("torch._dynamo", "transformers.generation.utils"):
        importlib.import_module(module)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code and "AutoModelForCausalLM" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], str(folder))
    raise CheckpointError(f"{folder}: {type(config).__name__} is not a causal language model transformers knows")


class ZeroResidentModel(ResidentModel):
    """:class:`ResidentModel` whose parameters live partitioned across the ranks; same ``apply``.

    Built from the newest checkpoint's config inside ``deepspeed.zero.Init`` (no rank ever holds it
    whole); the base class's set-up pairs each parameter's partition on this rank with the same
    elements of every checkpoint tensor, and the first merge (the newest checkpoint alone) is the load.
    """

    def __init__(
        self, cset: CheckpointSet, channel: Channel, dtype: str = "auto", deepspeed_config_path: str | None = None
    ) -> None:
        """``channel``: the launch's command flow; on rank 0 every merge or load is sent through it to the others."""
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        device = "cpu" if acc.device_name() == "cpu" else acc.current_device_name()
        self.channel = channel
        self.rank, self.world_size = channel.ranks.rank, channel.ranks.world_size
        self._deepspeed_config_path = deepspeed_config_path
        super().__init__(cset, device, resolve_dtype(dtype, cset, "cpu" if device == "cpu" else "cuda"))
        self._merge_partitions(self.weights)  # the load: the newest checkpoint alone, each rank its own partition

    def _build_model(self, folder: Path) -> Any:
        import deepspeed
        from transformers import AutoConfig

        newest, trust = self.cset.newest, self.cset.trust_remote_code
        with loading(newest.ref.text):
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
        klass = _model_class(config, folder, trust)
        ds_cfg = deepspeed_config(self.dtype, self._deepspeed_config_path)
        log.info(
            "Building the resident model from %s partitioned over %d ranks (ZeRO-3, %s, %s)",
            newest.name,
            self.world_size,
            self.device,
            self.dtype,
        )
        # dtype comes from the config: zero.Init's own dtype argument is ignored on accelerators without
        # fp16 (DeepSpeed 0.19 picks bf16 there), which would round fp32 weights.
        with deepspeed.zero.Init(config_dict_or_path=ds_cfg):
            model = klass._from_config(config, dtype=self.dtype)
        self.engine, *_ = deepspeed.initialize(model=model, config=ds_cfg)
        return self.engine.module.eval()

    def _model_shapes(self) -> dict[str, tuple[int, ...]]:
        # ZeRO adds ds_* attributes at run time; the partitioned model holds no values yet to compare
        shapes = {n: tuple(p.ds_shape) for n, p in self.model.named_parameters()}
        shapes.update({n: tuple(b.shape) for n, b in self.model.named_buffers()})
        return shapes

    def _destination(self, model_key: str) -> tuple[Any, torch.Tensor, int, int, bool]:
        import torch.distributed as dist

        if model_key not in self._params:  # a buffer the checkpoint carries: whole on every rank
            buf = dict(self.model.named_buffers())[model_key]
            return id(buf), buf, 0, buf.numel(), False
        p = self._params[model_key]
        part = p.ds_tensor
        start = part.ds_numel * dist.get_rank(group=p.ds_process_group)
        n = max(0, min(part.ds_numel, p.ds_numel - start))
        return id(p), part.data.narrow(0, 0, n), start, n, True

    @functools.cached_property
    def _params(self) -> dict[str, Any]:
        return dict(self.model.named_parameters())  # ZeRO adds ds_* attributes at run time

    def _parameters(self) -> list[tuple[str, Any]]:
        return [(name, id(p)) for name, p in self._params.items()]

    def _merge_threads(self) -> int | None:
        return torch.get_num_threads()  # the rank's share of the cores, set at start-up

    def _release_gathered(self) -> None:
        """Drop any parameter still gathered whole, so the next forward gathers the new partitions."""
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        params: list[Any] = list(self.model.parameters())  # ZeRO adds ds_status, partition() at run time
        stale = [p for p in params if p.ds_status == ZeroParamStatus.AVAILABLE]
        if stale:
            stale[0].partition(param_list=stale, has_been_updated=False)

    @torch.no_grad()
    def apply(self, weights: Any) -> None:
        """Merge ``weights`` into this rank's partition; on rank 0, every other rank is told to do the same."""
        self.channel.send(APPLY, [float(w) for w in weights])
        self._merge_partitions(weights)

    def _merge_partitions(self, weights: Any) -> None:
        self._release_gathered()
        super().apply(weights)

    @torch.no_grad()
    def load_folder(self, folder: Path) -> None:
        """Overwrite this rank's partition from a written checkpoint (a merge's re-score); rank 0 tells the others."""
        self.channel.send(LOAD, str(folder))
        self._release_gathered()
        super().load_folder(folder)

    def apply_fn(self, fn: Callable[[str, list[torch.Tensor]], torch.Tensor]) -> None:
        raise ConfigError(
            "merges other than linear need runtime=cpu or runtime=cuda (a partitioned model has no whole tensors)"
        )

    def state_dict(self) -> dict[str, Any]:
        raise ConfigError("a partitioned model has no state dict on one rank; write the merge from the checkpoints")
