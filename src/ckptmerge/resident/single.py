"""The resident model in one process: loaded whole from the newest checkpoint, on one device."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ckptmerge.checkpoints.checkpoint_set import CheckpointSet
from ckptmerge.checkpoints.reader import CheckpointReader
from ckptmerge.resident.base import ResidentModel, loading, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


class SingleResidentModel(ResidentModel):
    """:class:`ResidentModel` held whole by this process, on ``device`` (``auto``: a GPU if there is one)."""

    def __init__(self, cset: CheckpointSet, device: str = "cpu", dtype: str = "auto") -> None:
        device = resolve_device(device)
        super().__init__(cset, device, resolve_dtype(dtype, cset, device))
        if self._from_config:  # a ZeRO or DCP checkpoint: its weights come in through the merge itself
            self.apply(self.weights)

    def _build_model(self, folder: Path) -> Any:
        from transformers import AutoModelForCausalLM

        newest = self.cset.newest
        log.info("Building the resident model from %s (%s, %s)", newest.name, self.device, self.dtype)
        trust = self.cset.trust_remote_code
        with loading(newest.ref.text):
            if self._from_config:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
                model = AutoModelForCausalLM.from_config(config, dtype=self.dtype, trust_remote_code=trust)
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype, trust_remote_code=trust)
        model.to(self.device).eval()
        return model

    @property
    def _from_config(self) -> bool:
        """The newest checkpoint is no transformers folder (ZeRO, DCP): the model is built from its config."""
        return not isinstance(self.cset.newest.reader, CheckpointReader)

    def _model_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.model.state_dict().items()}

    def _same_values(self) -> Callable[[str, str], bool]:
        """The model was just loaded from the newest checkpoint: a renamed tensor holds exactly its values."""
        state = self.model.state_dict()
        newest = self.cset.newest.reader
        return lambda key, model_key: torch.equal(state[model_key].cpu(), newest.get(key).to(state[model_key].dtype))

    def _destination(self, model_key: str) -> tuple[Any, torch.Tensor, int, int, bool]:
        dest = self._state[model_key]
        dest = dest.data if isinstance(dest, torch.nn.Parameter) else dest
        return dest.data_ptr(), dest, 0, dest.numel(), False

    @functools.cached_property
    def _state(self) -> dict[str, Any]:
        return self.model.state_dict(keep_vars=True)

    def _parameters(self) -> list[tuple[str, Any]]:
        return [(name, p.data_ptr()) for name, p in self.model.named_parameters()]
