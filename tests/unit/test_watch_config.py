"""action=watch's config: watch.* checked on construction, errors naming the key."""

from __future__ import annotations

import pytest

from ckptmerge.config import config_from_dict
from ckptmerge.errors import ConfigError


def _watch(**watch):
    return {"action": "watch", "model": {"name": "local", "source": "local"}, "watch": {"dir": "/runs/ckpts", **watch}}


def test_a_watch_config_fills_the_pair_later():
    cfg = config_from_dict(_watch(poll_s=5, idle_exit_s=60))
    assert cfg.watch.dir == "/runs/ckpts" and cfg.watch.poll_s == 5 and cfg.watch.idle_exit_s == 60
    assert cfg.watch.settle_s == 10.0 and cfg.watch.promote is False and cfg.watch.warm_start is True
    assert cfg.model.checkpoints == ()  # validated without placeholders: the watch fills each pair


@pytest.mark.parametrize(
    "data, message",
    [
        ({"action": "watch", "model": {"name": "local", "source": "local"}}, "action=watch needs watch.dir"),
        (_watch(poll_s=0), "watch.poll_s must be a number of seconds > 0"),
        (_watch(settle_s=-1), "watch.settle_s must be a number of seconds >= 0"),
        (_watch(idle_exit_s="soon"), "watch.idle_exit_s must be a number of seconds >= 0 or null"),
        (_watch(promote="yes"), "watch.promote must be true or false"),
        (_watch(warm_start="no"), "watch.warm_start must be true or false"),
        (_watch(every=3), "unknown config key watch.every"),
        ({**_watch(), "model": {"name": "embedded", "source": "embedded"}}, "use model=local, not model=embedded"),
        (
            {**_watch(), "model": {"name": "local", "source": "local", "checkpoints": ["/a", "/b"]}},
            "model.checkpoints is filled by action=watch",
        ),
    ],
)
def test_bad_watch_config_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config_from_dict(data)
