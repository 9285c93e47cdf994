"""Reading mergekit YAML: the linear subset both tools share, everything else refused in one line."""

from __future__ import annotations

import pytest
import yaml

from ckptmerge.errors import ConfigError
from ckptmerge.interop.mergekit import mergekit_yaml, read_linear


def _write(tmp_path, text: str):
    p = tmp_path / "m.yml"
    p.write_text(text)
    return p


def test_emitted_config_reads_back_to_the_same_merge(tmp_path):
    text = mergekit_yaml(["/a/step1", "org/model@step2"], [0.25, 0.75], "bfloat16", "float16")
    data = yaml.safe_load(text)
    assert data["parameters"] == {"normalize": False} and data["dtype"] == "float32" and data["out_dtype"] == "bfloat16"
    r = read_linear(_write(tmp_path, text))
    assert r.models == ("/a/step1", "org/model@step2") and r.weights == (0.25, 0.75) and r.dtype == "bfloat16"
    # same dtype in and out: mergekit loads as stored, no dtype keys
    assert "dtype" not in yaml.safe_load(mergekit_yaml(["/a", "/b"], [0.5, 0.5], None, "float16"))


def test_global_weight_normalize_and_dtype(tmp_path):
    r = read_linear(
        _write(
            tmp_path,
            "merge_method: linear\ndtype: bf16\nparameters:\n  weight: 2\n"
            "models:\n  - model: /a\n  - model: /b\n    parameters: {weight: 6}\n",
        )
    )
    assert r.weights == (0.25, 0.75) and r.dtype == "bfloat16"


@pytest.mark.parametrize(
    "text, says",
    [
        ("merge_method: ties\nmodels: [{model: /a}, {model: /b}]\n", "merge_method='ties' is not supported"),
        ("merge_method: linear\nslices: []\nmodels: [{model: /a}, {model: /b}]\n", "'slices' is not supported"),
        ("merge_method: linear\nmodels: [{model: /a, parameters: {weight: 1}}]\n", "at least 2 models"),
        (
            "merge_method: linear\nmodels: [{model: /a, parameters: {weight: [0, 1]}}, "
            "{model: /b, parameters: {weight: 1}}]\n",
            "models[0].parameters.weight must be one number",
        ),
        (
            "merge_method: linear\nmodels: [{model: /a+/lora, parameters: {weight: 1}}, "
            "{model: /b, parameters: {weight: 1}}]\n",
            "LoRA adapter",
        ),
        (
            "merge_method: linear\nmodels: [{model: /a}, {model: /b, parameters: {weight: 1}}]\n",
            "models[0] has no weight",
        ),
        (
            "merge_method: linear\ntokenizer_source: union\nmodels: [{model: /a}, {model: /b}]\n",
            "'tokenizer_source' is not supported",
        ),
        (
            "merge_method: linear\nout_dtype: int8\nmodels: [{model: /a, parameters: {weight: 1}}, "
            "{model: /b, parameters: {weight: 1}}]\n",
            "out_dtype='int8'",
        ),
        ("- just a list\n", "not a mergekit config"),
        ("merge_method: [\n", "not valid YAML"),
    ],
)
def test_refused_with_one_line_naming_what(tmp_path, text, says):
    with pytest.raises(ConfigError) as e:
        read_linear(_write(tmp_path, text))
    assert says in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith("merge.mergekit_config")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read it"):
        read_linear(tmp_path / "nope.yml")


def test_only_action_merge_reads_it():
    from ckptmerge.config import config_from_dict

    with pytest.raises(ConfigError, match="merge.mergekit_config is read by action=merge only, not action=search"):
        config_from_dict({"action": "search", "merge": {"mergekit_config": "m.yml"}})
    cfg = config_from_dict({"action": "merge", "merge": {"mergekit_config": "m.yml", "output_dir": "out"}})
    assert cfg.merge.weights is None  # the YAML gives them (read by action=merge, see tests/scale)
