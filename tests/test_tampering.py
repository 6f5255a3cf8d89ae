"""Issue 29, wave 2: bad arguments refused when an app is declared, and another tenant's garbage
in the keys the app reads back from Redis. Each case runs against a real redis-server (the CLI in
a subprocess where the whole process matters) and checks that the app says one line, keeps
working and loses nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis

from streammachine import App
from streammachine.exceptions import ConfigError
from streammachine.settings import MAX_PARTITIONS
from tests.test_cli import cli, one_error_line


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


def _unused(r: syncredis.Redis) -> None:  # keeps the import for the tampering section below
    del r
