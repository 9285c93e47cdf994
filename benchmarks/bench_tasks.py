"""The lm-eval task the benchmarks write next to their data: bits per byte over a local JSON file."""
from __future__ import annotations

from pathlib import Path

_BPB_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


def write_bpb_task(folder: Path, name: str, data: Path) -> Path:
    """``folder/NAME.yaml``: rolling log-likelihood of each document's ``text`` field, in bits per byte."""
    path = Path(folder) / f"{name}.yaml"
    path.write_text(_BPB_YAML.format(name=name, data=data))
    return path
