"""Issue 29, wave 2: bad arguments refused when an app is declared, and another tenant's garbage
in the keys the app reads back from Redis. Each case runs against a real redis-server (the CLI in
a subprocess where the whole process matters) and checks that the app says one line, keeps
working and loses nothing.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis

from streammachine import App, Message, keys
from streammachine.exceptions import ConfigError
from streammachine.presence.liveness import MAX_ALIVE_MS
from streammachine.settings import MAX_PARTITIONS
from streammachine.testing import TestApp
from tests.test_cli import cli, one_error_line
from tests.util import eventually


async def _job() -> None:
    return None


# --- registration: refused at decoration time -------------------------------------------------

BAD_REGISTRATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("cron", {"expr": "0 0 31 2 *"}, "never fires"),
    ("cron", {"expr": "0 0 30 2 *"}, "never fires"),
    ("cron", {"expr": "* * * * *", "tz": "x" * 10_000}, "is not a time zone"),
    ("cron", {"expr": "* * * * *", "tz": "Nowhere/Atlantis"}, "is not a time zone"),
    ("cron", {"expr": "* * * * *", "tz": 5}, "is not a time zone"),
    ("timer", {"t": math.nan}, "from 0.01"),
    ("timer", {"t": math.inf}, "from 0.01"),
    ("timer", {"t": 0}, "from 0.01"),
    ("timer", {"t": -1}, "from 0.01"),
    ("timer", {"t": 1e-9}, "from 0.01"),
    ("timer", {"t": "5"}, "number of seconds"),
    ("agent", {"stream": "s", "partitions": 1.5}, "whole number"),
    ("agent", {"stream": "s", "partitions": math.nan}, "whole number"),
    ("agent", {"stream": "s", "partitions": "3"}, "whole number"),
    ("agent", {"stream": "s", "partitions": True}, "whole number"),
    ("agent", {"stream": "s", "partitions": 10**6}, f"from 1 to {MAX_PARTITIONS}"),
]


@pytest.mark.parametrize(("kind", "kwargs", "text"), BAD_REGISTRATIONS)
def test_bad_registration_is_a_config_error(kind: str, kwargs: dict[str, Any], text: str) -> None:
    app = App(name="reg")
    with pytest.raises(ConfigError, match=text):
        getattr(app, kind)(**kwargs)(_job)
    assert not app.crons and not app.timers and not app.agents


def test_partition_count_and_keys() -> None:
    app = App(name="keys")
    app.cron("0 0 29 2 *")(_job)  # a leap day is a real date
    app.timer(0.01)(_job)
    with pytest.raises(ConfigError, match="whole number"):
        app.partitioned("kt2", 1.5)  # type: ignore[arg-type]
    app.partitioned("kt", 4)
    assert app.route("kt", 7) == app.route("kt", "7") == app.route("kt", b"7")
    with pytest.raises(ConfigError, match="str, bytes or int"):
        app.route("kt", 7.5)  # type: ignore[arg-type]


def test_run_refuses_an_impossible_cron_in_one_line(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "feb.py").write_text(
        "from streammachine import App\napp = App(name='feb')\n\n"
        "@app.cron('0 0 31 2 *')\nasync def never() -> None: ...\n"
    )
    r = cli(redis_url, "run", f"{tmp_path / 'feb.py'}:app")
    one_error_line(r, 1, "never fires")


# --- tampering: the process registry ---------------------------------------------------------


async def test_garbage_in_the_process_registry_makes_no_dead_consumer_look_alive(
    redis_url: str, redis_sync: syncredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """`ZADD streammachine:processes 9e15 ""` made every consumer look alive (an empty prefix
    matches all), so nothing was ever claimed from a dead process."""
    far = 9e15
    redis_sync.zadd(keys.PROCESSES, {"": far, "0000-fake": far, b"\xff\xfe": far, "gone": far})
    redis_sync.zadd(keys.PROCESSES, {"gonehost-": far, "gonehost-7-": far})  # a real-looking one
    redis_sync.xgroup_create("s", "g", id="0", mkstream=True)
    for i in range(5):
        redis_sync.xadd("s", {"n": str(i)})
    redis_sync.xreadgroup("g", "gonehost-2-h-0", {"s": ">"}, count=5)
    app = App(name="registry")
    got: list[str] = []

    @app.agent("s", group="g", claim_idle_ms=300, claim_interval_ms=100, block_ms=100)
    async def h(record: Message) -> None:
        got.append(record.message["n"])

    with caplog.at_level(logging.WARNING, logger="streammachine.liveness"):
        async with TestApp(app, url=redis_url):
            await eventually(lambda: len(got) == 5, what="the dead consumer's entries claimed")
    assert sorted(got) == [str(i) for i in range(5)]
    assert redis_sync.xpending("s", "g")["pending"] == 0
    skipped = [r.getMessage() for r in caplog.records if "is not a process" in r.getMessage()]
    assert any("''" in m for m in skipped) and any("0000-fake" in m for m in skipped)
    # No member is taken for alive further ahead than StreamMachine ever marks one.
    now_ms = time.time() * 1000
    scores = dict(redis_sync.zrange(keys.PROCESSES, 0, -1, withscores=True))
    assert scores[b"gonehost-7-"] <= now_ms + MAX_ALIVE_MS + 5000
    assert max(scores.values()) <= now_ms + MAX_ALIVE_MS + 5000
