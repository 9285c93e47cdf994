"""The merged folder's model card, written without ``huggingface_hub.ModelCard`` (its module imports the hub
client: a third of a second of every ``action=merge``'s start-up), is byte for byte what ModelCard writes
for it, and the hub's parser reads back the metadata it was given."""

from __future__ import annotations

import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from ckptmerge.interop.facts import MergeFacts
from ckptmerge.interop.model_card import model_card

LOCAL = (
    {"name": "step1", "hub": False, "model": "/ckpt/step1", "folder": "/ckpt/step1"},
    {"name": "step2", "hub": False, "model": "/ckpt/step2", "folder": "/ckpt/step2"},
)
HUB = (
    {"name": "a", "hub": True, "model": "org/pythia@step1000", "folder": "/cache/a"},
    {"name": "b", "hub": True, "model": "org/pythia@step2000", "folder": "/cache/b"},
)
PLAIN = MergeFacts(checkpoints=LOCAL, weights={"step1": 0.3, "step2": 0.7}, in_dtype="float16")
SEARCHED = MergeFacts(
    checkpoints=HUB,
    weights={"a": 0.25, "b": 0.75},
    objective_definition="-1·t/bits_per_byte",
    objective=-1.25,
    dev_metrics={"t/bits_per_byte": 1.25, "t/acc": 0.5},
    test_metrics={"t/bits_per_byte": 1.3},
    task_splits={"t": "validation"},
)


@pytest.mark.parametrize("facts", [PLAIN, SEARCHED], ids=["plain merge", "searched, with results"])
def test_card_is_what_modelcard_writes_for_it(facts: MergeFacts) -> None:
    text = model_card(facts)
    assert str(ModelCard(text)) == text  # a fixed point: the hub's parse and re-dump change nothing
    data = ModelCard(text).data
    assert data.base_model == [c["model"].split("@")[0] if c["hub"] else c["model"] for c in facts.checkpoints]
    assert data.base_model_relation == "merge"
    assert len(data.eval_results or []) == len(facts.dev_metrics) + len(facts.test_metrics)


def test_writing_a_card_does_not_import_the_hub_client() -> None:
    code = (
        "import sys; from ckptmerge.interop.facts import MergeFacts; "
        "from ckptmerge.interop.model_card import model_card; "
        f"model_card(MergeFacts(checkpoints={LOCAL!r}, weights={{'step1': 0.3, 'step2': 0.7}})); "
        "print(sorted(m for m in ('huggingface_hub.hf_api', 'huggingface_hub.repocard', "
        "'huggingface_hub.file_download') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
