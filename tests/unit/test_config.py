"""Settings.from_env: NOETL_* parsing, CLI overrides, and the half-configured error."""

from __future__ import annotations

from pathlib import Path

import pytest

from noetl.config import Settings
from noetl.errors import ConfigError

BOTH = {"NOETL_NATS_URL": "nats://n:4222", "NOETL_PG_DSN": "postgresql://u@h:5432/d"}


def test_defaults_from_an_empty_environment_mean_local_mode() -> None:
    settings = Settings.from_env({})
    assert settings.nats_url is None and settings.pg_dsn is None
    assert settings.local_mode
    assert settings.api_port == 8082
    assert settings.partitions == 8
    assert settings.runner_pool == "default"
    assert settings.home == Path("~/.noetl").expanduser()


def test_every_variable_is_parsed_to_its_type() -> None:
    env = {
        **BOTH,
        "NOETL_API_PORT": "9000",
        "NOETL_PARTITIONS": "4",
        "NOETL_RUNNER_POOL": "gpu",
        "NOETL_RUNNER_CONCURRENCY": "3",
        "NOETL_API_TOKEN": "secret",
        "NOETL_ENCRYPTION_KEY": "k",
        "NOETL_HOME": "/srv/noetl",
        "NOETL_ACK_WAIT": "2.5",
        "NOETL_IDLE_EVICT": "7",
        "NOETL_RECONCILE_EVERY": "0.5",
        "NOETL_PYTHON_WORKERS": "2",
        "NOETL_LARGE_RESULT_BYTES": "1024",
    }
    s = Settings.from_env(env)
    assert (s.nats_url, s.pg_dsn) == (BOTH["NOETL_NATS_URL"], BOTH["NOETL_PG_DSN"])
    assert not s.local_mode
    assert s.api_port == 9000 and isinstance(s.api_port, int)
    assert s.partitions == 4
    assert s.runner_pool == "gpu"
    assert s.runner_concurrency == 3
    assert s.api_token == "secret" and s.encryption_key == "k"
    assert s.home == Path("/srv/noetl") and isinstance(s.home, Path)
    assert s.ack_wait == 2.5 and s.idle_evict == 7.0 and s.reconcile_every == 0.5
    assert s.python_workers == 2 and s.large_result_bytes == 1024


def test_empty_variables_count_as_unset() -> None:
    s = Settings.from_env({"NOETL_NATS_URL": "", "NOETL_PG_DSN": "", "NOETL_API_PORT": ""})
    assert s.local_mode and s.api_port == 8082


def test_home_expands_the_user_directory() -> None:
    assert Settings.from_env({"NOETL_HOME": "~/x"}).home == Path("~/x").expanduser()
    assert Settings.from_env({}, home="~/y").home == Path("~/y").expanduser()


def test_overrides_win_over_the_environment_and_none_is_ignored() -> None:
    env = {**BOTH, "NOETL_API_PORT": "9000", "NOETL_RUNNER_POOL": "env"}
    s = Settings.from_env(env, api_port=9100, runner_pool=None, nats_url="nats://flag:1")
    assert s.api_port == 9100
    assert s.runner_pool == "env"
    assert s.nats_url == "nats://flag:1"


def test_overrides_can_configure_both_services() -> None:
    s = Settings.from_env({}, nats_url="nats://a:1", pg_dsn="postgresql://b/c")
    assert not s.local_mode


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOETL_PARTITIONS", "3")
    assert Settings.from_env().partitions == 3


def test_the_suite_hides_the_users_noetl_variables() -> None:
    # The autouse session fixture cleared them; a user's ~/.noetl or servers never leak in.
    s = Settings.from_env()
    assert s.local_mode
    assert s.home == Path("~/.noetl").expanduser()


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"NOETL_NATS_URL": "nats://n:4222"}, "NOETL_PG_DSN"),
        ({"NOETL_PG_DSN": "postgresql://u@h/d"}, "NOETL_NATS_URL"),
    ],
)
def test_half_configured_services_are_an_error(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message.startswith(f"{missing} is not set")
    assert "configure both NATS and PostgreSQL, or neither" in message


def test_half_configured_through_a_flag_is_an_error_too() -> None:
    with pytest.raises(ConfigError, match="NOETL_NATS_URL is not set"):
        Settings.from_env({}, pg_dsn="postgresql://u@h/d")


@pytest.mark.parametrize("name", ["NOETL_API_PORT", "NOETL_PARTITIONS", "NOETL_ACK_WAIT"])
def test_malformed_numbers_are_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid configuration"):
        Settings.from_env({name: "lots"})


@pytest.mark.parametrize("value", ["0", "-2"])
def test_partitions_must_be_positive(value: str) -> None:
    with pytest.raises(ConfigError, match="NOETL_PARTITIONS must be at least 1"):
        Settings.from_env({"NOETL_PARTITIONS": value})


def test_unrelated_variables_are_ignored() -> None:
    s = Settings.from_env({"NOETL_UNKNOWN": "x", "PATH": "/bin", "NOETL_TEST_PG_DSN": "y"})
    assert s.local_mode


@pytest.mark.parametrize(
    "name",
    ["NOETL_MAX_DEPTH", "NOETL_MAX_DESCENDANTS", "NOETL_MAX_LOOP_ITEMS", "NOETL_RESULT_MAX_MB"],
)
def test_playbook_bounds_must_be_positive(name: str) -> None:
    assert getattr(Settings.from_env({name: "3"}), name[6:].lower()) == 3
    with pytest.raises(ConfigError, match=f"{name} must be at least 1"):
        Settings.from_env({name: "0"})
