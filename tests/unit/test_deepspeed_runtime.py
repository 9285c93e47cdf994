"""Pieces of runtime=deepspeed that need no second process: config, tensor pairing, launcher argv."""

from __future__ import annotations

import json

import pytest
import torch

from ckptmerge.config import RuntimeConfig, config_from_dict
from ckptmerge.errors import ConfigError
from ckptmerge.resident.base import pair_tensor_names
from ckptmerge.resident.zero import deepspeed_config


def _main_module():
    """The command's module (the Hydra app), which the checkout's src/main.py runs."""
    import ckptmerge.cli

    return ckptmerge.cli


def test_config_partitions_every_parameter_and_follows_the_dtype():
    cfg = deepspeed_config(torch.float32, None)
    assert cfg["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert not cfg["fp16"]["enabled"] and not cfg["bf16"]["enabled"]
    assert deepspeed_config(torch.bfloat16, None)["bf16"]["enabled"]
    assert deepspeed_config(torch.float16, None)["fp16"]["enabled"]


def test_user_json_overrides_keys_but_not_the_stage(tmp_path):
    over = tmp_path / "ds.json"
    over.write_text(json.dumps({"zero_optimization": {"offload_param": {"device": "cpu"}}}))
    cfg = deepspeed_config(torch.float32, str(over))
    assert cfg["zero_optimization"] == {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        "offload_param": {"device": "cpu"},
    }
    over.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match="stage=2; the resident model needs stage 3"):
        deepspeed_config(torch.float32, str(over))
    over.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        deepspeed_config(torch.float32, str(over))
    with pytest.raises(ConfigError, match="does not exist"):
        deepspeed_config(torch.float32, str(tmp_path / "missing.json"))


def test_tensors_pair_by_name_then_by_the_one_free_tensor_of_that_shape():
    files = {"embed_in.weight": (10, 4), "embed_out.weight": (10, 4), "ln.weight": (4,), "attn.masked_bias": ()}
    model = {"embed_in.weight": (10, 4), "lm_head.weight": (10, 4), "ln.weight": (4,)}
    assert pair_tensor_names(files, model) == {
        "embed_in.weight": "embed_in.weight",
        "ln.weight": "ln.weight",
        "embed_out.weight": "lm_head.weight",
    }


def test_runtime_config_is_validated():
    assert RuntimeConfig(backend="deepspeed").backend == "deepspeed"
    with pytest.raises(ConfigError, match="runtime.backend"):
        RuntimeConfig(backend="fsdp")
    with pytest.raises(ConfigError, match="runtime.timeout_s"):
        RuntimeConfig(backend="deepspeed", timeout_s=0)
    with pytest.raises(ConfigError, match="action=pilot does not run under runtime=deepspeed"):
        config_from_dict({"action": "pilot", "runtime": {"backend": "deepspeed"}})


def test_launcher_arguments_are_hidden_from_hydra(monkeypatch):
    main = _main_module()
    monkeypatch.setenv("RANK", "0")
    assert main._launcher_argv(["--local_rank=0", "runtime=deepspeed"]) == ["runtime=deepspeed"]
    assert main._launcher_argv(["--local_rank", "3", "a=1"]) == ["a=1"]
    monkeypatch.setenv("RANK", "1")
    out = main._launcher_argv(["--local_rank=1", "runtime=deepspeed"])
    assert out[0] == "runtime=deepspeed" and "hydra.output_subdir=null" in out and "hydra/job_logging=disabled" in out
