"""Settings: environment variables and flags, validated once, and the App/agent/timer configs.

Precedence: explicit arguments (CLI flags, constructor arguments) beat environment variables, which
beat the defaults. Every bad value raises `ConfigError` naming the variable and the valid form.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import keys
from .exceptions import ConfigError

log = logging.getLogger("streammachine.settings")

__all__ = [
    "MAX_LEASE_MS",
    "MAX_PARTITIONS",
    "MAX_TIMER_INTERVAL_S",
    "MIN_TIMER_INTERVAL_S",
    "AppConfig",
    "ConsumerConfig",
    "Settings",
    "TimerConfig",
    "check_partitions",
]

DEFAULT_GROUP = "eventengine"
#: The dashboard's environment variables, named once (the CLI's `--token` options read them too).
DASHBOARD_TOKEN_ENV = "STREAMMACHINE_DASHBOARD_TOKEN"
DASHBOARD_OPERATOR_TOKEN_ENV = "STREAMMACHINE_DASHBOARD_OPERATOR_TOKEN"
DASHBOARD_ALLOWED_HOSTS_ENV = "STREAMMACHINE_DASHBOARD_ALLOWED_HOSTS"
StartAt = Literal["earliest", "latest"]


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _env_float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number; set it to seconds, e.g. 30") from None
    if value < 0:
        raise ConfigError(f"{name}={value} must be >= 0")
    return value


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Every environment setting of StreamMachine, read once by `Settings.from_env()`.

    Example:
        >>> Settings.from_env({"REDIS_URL": "memory://"}).redis_url
        'memory://'
    """

    redis_url: str | None = None
    redis_host: str = "localhost"
    redis_port: int = 6379
    redis_db: int = 0
    redis_max_connections: int = 10
    records: int = 10000
    count: int = 10
    default_group: str = DEFAULT_GROUP
    stream_maxlen: int | None = None
    block_ms: int = 2000
    claim_idle_ms: int = 60000
    shutdown_timeout_s: float = 30.0
    #: How long one handler call may run before it is cancelled (None: no limit).
    handler_timeout_s: float | None = 300.0
    storage_namespace: str = "default"
    secret_key: str | None = None
    #: Read pickles signed in the older SM1 form (a signature not bound to its key).
    allow_unbound_pickles: bool = False
    cluster: bool = False
    redis_down_exit_s: float | None = None
    #: How long start-up waits for a Redis that is not ready yet (loading its dataset, a
    #: replica without its master, a refused connection while it restarts); 0: fail at once.
    redis_wait_s: float = 30.0
    #: How long `streammachine asyncapi` lets the app's module import (0: no limit).
    import_timeout_s: float = 30.0
    disable_jit: bool = False
    dashboard: bool = False
    dashboard_host: str | None = None
    dashboard_port: int | None = None
    dashboard_token: str | None = None
    #: The token that lets the dashboard act (pause, retry, purge, ...); unset = read-only.
    dashboard_operator_token: str | None = None
    #: Host names the dashboard answers when it has no token (besides IP addresses and
    #: `localhost`), so a loopback dashboard cannot be read through DNS rebinding.
    dashboard_allowed_hosts: tuple[str, ...] = ()
    #: Where readiness is reported (sd_notify): systemd's NOTIFY_SOCKET, or the supervisor's.
    notify_socket: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the environment (or `env`, for tests)."""
        e = os.environ if env is None else env
        maxlen = _env_int(e, "STREAMMACHINE_STREAM_MAXLEN", 0)
        return cls(
            redis_url=e.get("REDIS_URL") or None,
            redis_host=e.get("REDIS_HOST") or "localhost",
            redis_port=_env_int(e, "REDIS_PORT", 6379, 1),
            redis_db=_env_int(e, "REDIS_DB", 0),
            redis_max_connections=_env_int(e, "REDIS_MAX_CONNECTIONS", 10, 1),
            records=_env_int(e, "STREAMMACHINE_RECORDS", 10000, 1),
            count=_env_int(e, "STREAMMACHINE_COUNT", 10, 1),
            default_group=e.get("STREAMMACHINE_DEFAULT_GROUP") or DEFAULT_GROUP,
            stream_maxlen=maxlen or None,
            block_ms=_env_int(e, "STREAMMACHINE_BLOCK_MS", 2000, 1),
            claim_idle_ms=_env_int(e, "STREAMMACHINE_CLAIM_IDLE_MS", 60000, 1),
            shutdown_timeout_s=_env_float(e, "STREAMMACHINE_SHUTDOWN_TIMEOUT_S", 30.0) or 0.0,
            handler_timeout_s=_env_float(e, "STREAMMACHINE_HANDLER_TIMEOUT_S", 300.0) or None,
            storage_namespace=e.get("STREAMMACHINE_STORAGE_NAMESPACE") or "default",
            secret_key=e.get("STREAMMACHINE_SECRET_KEY") or None,
            allow_unbound_pickles=_env_bool(e, "STREAMMACHINE_ALLOW_UNBOUND_PICKLES"),
            cluster=_env_bool(e, "STREAMMACHINE_CLUSTER"),
            redis_down_exit_s=_env_float(e, "STREAMMACHINE_REDIS_DOWN_EXIT_S", None),
            redis_wait_s=_env_float(e, "STREAMMACHINE_REDIS_WAIT_S", 30.0) or 0.0,
            import_timeout_s=_env_float(e, "STREAMMACHINE_IMPORT_TIMEOUT_S", 30.0) or 0.0,
            disable_jit=_env_bool(e, "STREAMMACHINE_DISABLE_JIT"),
            dashboard=_env_bool(e, "STREAMMACHINE_DASHBOARD"),
            dashboard_host=e.get("STREAMMACHINE_DASHBOARD_HOST") or None,
            dashboard_port=_env_int(e, "STREAMMACHINE_DASHBOARD_PORT", 0, 0) or None,
            dashboard_token=e.get(DASHBOARD_TOKEN_ENV) or None,
            dashboard_operator_token=e.get(DASHBOARD_OPERATOR_TOKEN_ENV) or None,
            dashboard_allowed_hosts=tuple(
                h.strip().lower()
                for h in e.get(DASHBOARD_ALLOWED_HOSTS_ENV, "").split(",")
                if h.strip()
            ),
            notify_socket=e.get("NOTIFY_SOCKET") or None,
        )

    @classmethod
    def current(cls) -> Settings:
        """This process's settings: the ones its runner installed (`install`), else the
        environment's as of now. What `App`, `Storage` and the other defaults read.

        Example:
            >>> Settings.current().count >= 1
            True
        """
        return _installed if _installed is not None else cls.from_env()

    def install(self) -> None:
        """Make these the process's settings (`current`): the runner reads the environment once,
        applies its flags, installs the result and hands it to its worker processes."""
        global _installed
        _installed = self

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (e.g. the CLI's flags over the environment's values)."""
        return dataclasses.replace(self, **changes)

    def resolve_url(self) -> str:
        """The Redis URL: `REDIS_URL` when set, else one built from host, port and db."""
        if self.redis_url:
            return self.redis_url
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"


_installed: Settings | None = None

#: The longest lease (partition owners, exclusive agents) may live without renewal: a lease with
#: a longer expiry was not written by StreamMachine, and is cut to this.
MAX_LEASE_MS = 60_000
#: The most partitions one stream may have: each is a stream, a lease and a consumer per owner,
#: and beyond this one process spends its time renewing leases instead of handling entries.
MAX_PARTITIONS = 256
#: A timer's shortest and longest interval: a shorter one is a busy loop, not a timer.
MIN_TIMER_INTERVAL_S = 0.01
MAX_TIMER_INTERVAL_S = 366 * 86400.0


def check_partitions(partitions: object) -> int:
    """`partitions` as an int from 1 to `MAX_PARTITIONS`, else ConfigError.

    Example:
        >>> check_partitions(4)
        4
    """
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise ConfigError(
            f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, not {partitions!r}"
        )
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be from 1 to {MAX_PARTITIONS}, not {partitions}")
    return partitions


@dataclass(slots=True)
class AppConfig:
    """Validated arguments of `App`.

    Example:
        >>> AppConfig(name="orders", max_processes=2).max_processes
        2
    """

    name: str = "streammachine"
    to_scan: bool = True
    max_processes: int = 5
    max_threads: int = 5
    shutdown_timeout_s: float = 30.0
    stream_maxlen: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name must be a non-empty string")
        if self.max_processes < 1:
            raise ConfigError("max_processes must be >= 1")
        if self.max_threads < 1:
            raise ConfigError("max_threads must be >= 1")
        if self.shutdown_timeout_s < 0:
            raise ConfigError("shutdown_timeout_s must be >= 0")
        if self.stream_maxlen is not None and self.stream_maxlen < 1:
            raise ConfigError("maxlen must be >= 1 (or None for no trimming)")


@dataclass(slots=True)
class ConsumerConfig:
    """Validated arguments of `@app.agent`.

    Example:
        >>> ConsumerConfig(stream="orders", group="billing", concurrency=2).concurrency
        2
    """

    stream: str
    group: str = DEFAULT_GROUP
    concurrency: int = 1
    processes: int | None = None
    start: StartAt = "earliest"
    count: int = 10
    block_ms: int = 2000
    claim_idle_ms: int = 60000
    claim_interval_ms: int = 5000
    max_deliveries: int = 5
    retry_backoff_ms: int = 1000
    dead_letter: str | None = None
    maxlen: int | None = None
    trim: Literal["acked"] | None = None
    partitions: int | None = None
    takeover: bool = False
    #: One consumer at a time across every process and host (a lease; standbys take over).
    exclusive: bool = False
    #: How long a partition's (or an exclusive agent's) lease lives without renewal.
    lease_ms: int = 5000
    name: str = ""
    #: One limit shared by every consumer, process and host of the agent, e.g. "200/s".
    rate_limit: str | None = None
    #: How long one handler call may run before it is cancelled and counts as failed.
    timeout_s: float | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not self.stream:
            raise ConfigError("stream must be a non-empty string")
        if not isinstance(self.group, str) or not self.group:
            raise ConfigError("group must be a non-empty string")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        if self.processes is not None and self.processes < 1:
            raise ConfigError("processes must be >= 1")
        if self.start not in ("earliest", "latest"):
            raise ConfigError(f"start must be 'earliest' or 'latest', not {self.start!r}")
        if self.count < 1:
            raise ConfigError("count must be >= 1")
        if self.block_ms < 1:
            raise ConfigError("block_ms must be >= 1")
        if self.claim_idle_ms < 1:
            raise ConfigError("claim_idle_ms must be >= 1")
        if self.max_deliveries < 0:
            raise ConfigError("max_deliveries must be >= 0 (0 = never dead-letter)")
        if self.retry_backoff_ms < 0:
            raise ConfigError("retry_backoff_ms must be >= 0")
        if self.maxlen is not None and self.maxlen < 1:
            raise ConfigError("maxlen must be >= 1 (or None for no trimming)")
        if self.partitions is not None:
            check_partitions(self.partitions)
        if self.exclusive and self.partitions:
            raise ConfigError(
                "exclusive=True and partitions=K do not go together: each partition already has "
                "exactly one owner; drop one of them"
            )
        if isinstance(self.lease_ms, bool) or not isinstance(self.lease_ms, int):
            raise ConfigError(f"lease_ms must be an int, not {self.lease_ms!r}")
        if not 100 <= self.lease_ms <= MAX_LEASE_MS:
            raise ConfigError(
                f"lease_ms must be between 100 and {MAX_LEASE_MS}, not {self.lease_ms}"
            )
        if self.trim not in (None, "acked"):
            raise ConfigError(f"trim must be 'acked' or None, not {self.trim!r}")
        if self.timeout_s is not None and not (
            isinstance(self.timeout_s, int | float) and 0 < self.timeout_s < float("inf")
        ):
            raise ConfigError(
                f"timeout_s={self.timeout_s!r}: give a number of seconds > 0, or 0/None for none"
            )
        if self.rate_limit is not None:
            from .schedule.timing import parse_rate

            parse_rate(self.rate_limit)
        if self.dead_letter is None:
            self.dead_letter = keys.dead_letters(self.stream)
        if self.block_ms >= self.claim_idle_ms:
            # A blocked read holds back this consumer's retries and claims for block_ms.
            block_ms = max(1, self.claim_idle_ms // 2)
            log.warning(
                "%s: block_ms %d is not below claim_idle_ms %d; using block_ms %d",
                self.stream, self.block_ms, self.claim_idle_ms, block_ms,
            )  # fmt: skip
            self.block_ms = block_ms


@dataclass(slots=True)
class TimerConfig:
    """Validated arguments of `@app.timer`.

    Example:
        >>> TimerConfig(interval=5).interval
        5
    """

    interval: float
    name: str = ""
    #: "app": one run per interval across every process and host of the app (a lease in Redis
    #: picks the runner); "instance": every process runs it.
    scope: Literal["app", "instance"] = "app"

    def __post_init__(self) -> None:
        if self.scope not in ("app", "instance"):
            raise ConfigError(f"scope must be 'app' or 'instance', not {self.scope!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int | float):
            raise ConfigError(f"interval must be a number of seconds, not {self.interval!r}")
        # `not a <= x <= b` is also true for NaN.
        if not MIN_TIMER_INTERVAL_S <= self.interval <= MAX_TIMER_INTERVAL_S:
            raise ConfigError(
                f"timer interval {self.interval!r}: give a number of seconds from "
                f"{MIN_TIMER_INTERVAL_S} to {MAX_TIMER_INTERVAL_S:.0f} (366 days)"
            )
