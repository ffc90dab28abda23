"""Settings from the environment (`NOETL_*`), overridable by CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import msgspec

from noetl.errors import ConfigError
from noetl.pools import bad_pool_name, parse_kind_pools

# The actor roles a mesh process can take.
ROLES: Final = ("catalog", "coordinator", "runner")


class Settings(msgspec.Struct, kw_only=True):
    """Runtime configuration. Field names match the `NOETL_<NAME>` variables."""

    nats_url: str | None = None
    pg_dsn: str | None = None
    api_port: int = 8082
    # Where the API listens: 127.0.0.1 without a token, every address with one (default).
    api_host: str | None = None
    # Serve without a token on a non-loopback address anyway.
    api_insecure: bool = False
    # Host names the API answers to (comma-separated; empty: any): stops DNS rebinding.
    api_allowed_hosts: str = ""
    # Seconds a client has to send a request's headers (from connecting, or from the end of
    # its previous request) and, separately, its body: slow clients are cut off.
    api_read_timeout: float = 30.0
    # Where a mesh process without the API (coordinators, runners) serves its /metrics.
    metrics_port: int | None = None
    partitions: int = 8
    # Replicas of every JetStream stream: 1 on one server, 3 on a 3-node cluster.
    js_replicas: int = 1
    # The pool a runner serves, and where commands go that nothing else routes.
    runner_pool: str = "default"
    # Tool kinds routed to a pool as a whole: `duckdb=heavy,snowflake=warehouse`.
    runner_pools: str = ""
    # Commands one runner process holds at once (JetStream delivers no more to it).
    runner_concurrency: int = 16
    api_token: str | None = None
    encryption_key: str | None = None
    home: Path = Path("~/.noetl").expanduser()
    # Seconds JetStream waits for an ack before redelivering; runners report progress
    # well within it, so only a dead process lets it expire.
    ack_wait: float = 30.0
    # Deliveries of a message whose handling keeps failing (store down, a bug) before it is
    # dead-lettered (coordinator) or its step failed (runner), instead of looping forever.
    max_deliveries: int = 5
    # Seconds during which JetStream drops a republished message with the same id.
    dedup_window: float = 120.0
    # Seconds an execution actor may sit idle before the coordinator host drops it.
    idle_evict: float = 60.0
    # Seconds between reconciler sweeps for executions with lost or stalled work.
    reconcile_every: float = 15.0
    # Concurrent python calls per runner (0: two per CPU); bounds python loops' concurrency.
    python_workers: int = 0
    # The account python steps run as when the runtime runs as root.
    python_user: str = "nobody"
    # Each python worker's data size limit in MiB (0: none): runaway allocation fails the step.
    python_memory_mb: int = 0
    # Modules (comma-separated) imported once by the workers' template: faster steps, and
    # under a root runtime, packages the unprivileged account could not read itself.
    python_preload: str = ""
    # Idle python workers kept per runner for their executions' next steps (0: none): a
    # worker serves one execution only, so keeping it saves the next step a fork.
    python_idle_workers: int = 256
    # Seconds an idle python worker is kept before it is stopped.
    python_idle_seconds: float = 30.0
    # Idle python workers are kept only while this many MiB of memory stay available to the
    # runner (the machine's, or its cgroup's limit minus its usage).
    python_idle_free_mb: int = 256
    # Egress policy of http tools and script sources: comma-separated CIDRs, addresses and
    # host names (`*.example.com`); link-local and metadata ranges are always denied.
    http_deny: str = ""
    http_allow: str = ""
    # When set, the file sink and DuckDB read and write local files only under this folder.
    data_root: str | None = None
    # Where a runner reads relative `file` scripts that did not travel with their playbook.
    script_root: str | None = None
    allow_absolute_scripts: bool = False
    large_result_bytes: int = 256 * 1024
    # MiB of a step result encoded as JSON: a larger one fails its step, checked where it
    # is encoded (a python worker, the runner) before the runner spends more on it.
    result_max_mb: int = 64
    # Sub-playbook nesting: a child deeper than this fails at its start (the top is depth 0).
    max_depth: int = 16
    # Live (running) descendants of one top execution: a start beyond it fails.
    max_descendants: int = 1000
    # Items of one loop: a longer `loop.in` fails its step, with the count in the message.
    max_loop_items: int = 100_000
    # Seconds one template may run; a longer one fails its step (`render_timeout`).
    render_timeout: float = 5.0

    @property
    def local_mode(self) -> bool:
        """True when neither NATS nor PostgreSQL is configured: embedded servers are used."""
        return self.nats_url is None and self.pg_dsn is None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Read `NOETL_*` variables, then apply non-None `overrides` (CLI flags)."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in cls.__struct_fields__:
            raw = source.get(f"NOETL_{name.upper()}")
            if raw not in (None, ""):
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        home = values.pop("home", None)
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from exc
        if home is not None:
            settings.home = Path(str(home)).expanduser()
        for name in ("max_depth", "max_descendants", "max_loop_items", "result_max_mb"):
            if getattr(settings, name) < 1:
                raise ConfigError(f"NOETL_{name.upper()} must be at least 1")
        problem = bad_pool_name(settings.runner_pool)
        if problem is not None:
            raise ConfigError(f"NOETL_RUNNER_POOL: {problem}")
        parse_kind_pools(settings.runner_pools)
        if settings.runner_concurrency < 1:
            raise ConfigError("NOETL_RUNNER_CONCURRENCY must be at least 1")
        for name in ("python_idle_workers", "python_idle_free_mb"):
            if getattr(settings, name) < 0:
                raise ConfigError(f"NOETL_{name.upper()} must not be negative")
        for name in ("render_timeout", "api_read_timeout", "python_idle_seconds"):
            if not getattr(settings, name) > 0:
                raise ConfigError(f"NOETL_{name.upper()} must be a positive number of seconds")
        if settings.partitions < 1:
            raise ConfigError("NOETL_PARTITIONS must be at least 1")
        if not 1 <= settings.js_replicas <= 5:
            raise ConfigError("NOETL_JS_REPLICAS must be between 1 and 5 (JetStream's limit)")
        if (settings.nats_url is None) != (settings.pg_dsn is None):
            missing = "NOETL_PG_DSN" if settings.pg_dsn is None else "NOETL_NATS_URL"
            raise ConfigError(
                f"{missing} is not set: configure both NATS and PostgreSQL, or neither "
                "to use the embedded local servers"
            )
        return settings
