"""Hub checkpoints load offline from a standard hub cache laid out on disk (repo, revision ref, snapshot)."""

from __future__ import annotations

import shutil

import pytest

from ckptmerge.checkpoints import CheckpointSet
from ckptmerge.errors import CheckpointError
from tests.helpers import tiny_neox


def lay_out_hub_cache(cache, repo: str, revision: str, src, commit: str):
    """What huggingface_hub writes: models--org--name/refs/<revision> -> commit, snapshots/<commit>/files."""
    org, name = repo.split("/")
    base = cache / f"models--{org}--{name}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / revision).write_text(commit)
    shutil.copytree(src, base / "snapshots" / commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay_out_hub_cache(cache, "acme/tiny-neox", "step100", tiny_neox(tmp_path / "a", seed=1), "a" * 40)
    lay_out_hub_cache(cache, "acme/tiny-neox", "step200", tiny_neox(tmp_path / "b", seed=2), "b" * 40)
    return cache


def test_repo_at_revision_loads_from_the_cache_offline(hub_cache):
    cset = CheckpointSet.from_refs(["acme/tiny-neox@step100", "acme/tiny-neox@step200"])
    assert cset.names == ["step100", "step200"]
    assert cset.checkpoints[0].folder == hub_cache / "models--acme--tiny-neox" / "snapshots" / ("a" * 40)
    assert cset.checkpoints[1].identity()["source"] == "acme/tiny-neox@step200"
    a, b = (c.reader.get("gpt_neox.embed_in.weight") for c in cset.checkpoints)
    assert not (a == b).all()


def test_revision_missing_from_the_cache_is_one_clear_error(hub_cache):
    with pytest.raises(CheckpointError, match="acme/tiny-neox@step300 is not in the local hub cache"):
        CheckpointSet.from_refs(["acme/tiny-neox@step100", "acme/tiny-neox@step300"])
