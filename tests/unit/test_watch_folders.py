"""Checkpoint folder names of each trainer style, their steps and their order."""

from __future__ import annotations

from ckptmerge.watch.folders import step_folders, step_of


def test_each_trainer_style_names_its_step():
    assert step_of("step00250") == 250  # Pythia, the embedded trajectory
    assert step_of("checkpoint-500") == 500  # Hugging Face Trainer
    assert step_of("global_step1200") == 1200  # DeepSpeed
    assert step_of("iter_0007000") == 7000  # Megatron
    assert step_of("step-3000") == 3000  # torchtitan's Distributed Checkpoints


def test_other_names_are_not_checkpoints():
    for name in (
        "runs",
        "latest",
        "checkpoint-500.tmp",
        "tmp-checkpoint-500",
        "step",
        "checkpoint-",
        "iter_",
        "global_step12a",
        "model.safetensors",
        "Step100",
    ):
        assert step_of(name) is None, name


def test_folders_are_ordered_by_step_not_by_name(tmp_path):
    for name in ("checkpoint-1000", "checkpoint-200", "checkpoint-30", "runs", "checkpoint-99.partial"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-5").write_text("a file, not a folder")
    found = step_folders(tmp_path)
    assert [(f.step, f.name) for f in found] == [
        (30, "checkpoint-30"),
        (200, "checkpoint-200"),
        (1000, "checkpoint-1000"),
    ]


def test_mixed_styles_order_by_step(tmp_path):
    for name in ("iter_0000300", "step100", "global_step200"):
        (tmp_path / name).mkdir()
    assert [f.name for f in step_folders(tmp_path)] == ["step100", "global_step200", "iter_0000300"]
