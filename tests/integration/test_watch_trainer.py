"""CkptMergeCallback with a real transformers Trainer: a few CPU steps on the embedded corpus, two saves,
a watcher started beside training that searches the pair and exits when idle."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def _dataset(traj, tokenizer, n: int = 16, length: int = 64):
    import torch

    texts = [json.loads(line)["text"] for line in (traj.root / "train.jsonl").read_text().splitlines()[:200]]
    ids = tokenizer("\n\n".join(texts), return_tensors="pt")["input_ids"][0]
    assert len(ids) >= n * length
    return [
        {
            "input_ids": ids[i * length : (i + 1) * length],
            "labels": ids[i * length : (i + 1) * length].clone(),
            "attention_mask": torch.ones(length, dtype=torch.long),
        }
        for i in range(n)
    ]


def test_trainer_callback_starts_a_watcher_that_searches_the_saved_pair(tmp_path, tiny_trajectory):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from ckptmerge.integrations.hf_trainer import CkptMergeCallback

    start = tiny_trajectory.checkpoints[0]
    model = AutoModelForCausalLM.from_pretrained(start)
    tokenizer = AutoTokenizer.from_pretrained(start)
    out = tmp_path / "out"
    callback = CkptMergeCallback(
        overrides=[
            "eval.tasks=[ckptmerge_dev_bpb]",
            f"eval.include_path={tiny_trajectory.tasks_dir}",
            "eval.limit=12",
            "search.budget=3",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "registry.name=trainer-test",
            "tracking.log_plots=false",
            "watch.settle_s=30",
            f"hydra.run.dir={tmp_path / 'watch-run'}",
            # the whole flow down to the champion: register whatever the gain, then promote
            "registry.require_significant_gain=false",
            "watch.promote=true",
            "eval.test_tasks=[ckptmerge_test_bpb]",
        ],
        idle_exit_s=3,
        poll_s=0.3,
        cwd=tmp_path,
        env=os.environ.copy(),
    )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        save_steps=2,
        save_strategy="steps",
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=100,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_dataset(tiny_trajectory, tokenizer),
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()  # returns without waiting for any evaluation
    assert callback.process is not None and callback.process.poll() is None  # the watcher is still at work
    for step in (2, 4):
        marker = out / f"checkpoint-{step}" / ".ckptmerge-complete"
        assert json.loads(marker.read_text()) == {"global_step": step}
    code = callback.wait(timeout=400)
    log = (out / "ckptmerge-watch.log").read_text()
    assert code == 0, log[-3000:]
    assert callback.started == 1  # the second save found the watcher running
    assert "Traceback" not in log
    # settle_s=30 was never waited for: the markers (and trainer_state.json) vouch for the checkpoints
    assert "settling" not in log
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ckptmerge").experiment_id
    searches = client.search_runs([exp], "tags.`ckptmerge.kind` = 'search'")
    assert [(r.data.tags["ckptmerge.checkpoints"], r.info.status) for r in searches] == [
        ("checkpoint-2,checkpoint-4", "FINISHED")
    ]
    assert searches[0].data.tags["ckptmerge.watch.dir"] == str(out.resolve())
    watch = client.search_runs([exp], "tags.`ckptmerge.kind` = 'watch'")
    assert len(watch) == 1 and watch[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(watch[0].info.run_id, "gain")] == [4]
    # registered as candidate, then the promotion policy made the first candidate champion
    assert str(client.get_model_version_by_alias("trainer-test", "candidate").version) == "1"
    assert str(client.get_model_version_by_alias("trainer-test", "champion").version) == "1"
    promotion = json.loads(
        (tmp_path / "watch-run" / "promotions" / "checkpoint-2+checkpoint-4" / "result.json").read_text()
    )
    assert promotion["decision"] == "first"
    assert "promotion after checkpoint-2+checkpoint-4: first" in log
