"""Config loading: strict validation with paths, env interpolation, CLI exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_bridge.config import load_config, parse_config
from cdc_bridge.kernel.errors import ConfigError

GOOD = """
state_dir: /tmp/x
nats:
  url: nats://127.0.0.1:4222
  stream: CDC
  subject_prefix: cdc
adapters:
  - name: erp
    type: sql_poll
    url: sqlite:///legacy.db
    poll_interval: 250ms
    tables:
      - {name: invoices, incrementing_column: id}
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", env or {})
    return info.value.errors


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(GOOD, env={})
    assert cfg.nats.servers() == ["nats://127.0.0.1:4222"]
    assert cfg.adapter_configs[0].name == "erp"
    assert cfg.adapters[0].poll_interval == 0.25
    assert cfg.outbox_url() == "sqlite:////tmp/x/outbox.db"


def test_embedded_default_when_url_absent() -> None:
    cfg = parse_config("nats: {embedded: {port: 14999}}\n", env={})
    assert cfg.nats.url is None
    assert cfg.nats.servers() == ["nats://127.0.0.1:14999"]


def test_unknown_keys_wrong_types_and_missing_keys_reported_together() -> None:
    text = GOOD.replace("poll_interval: 250ms", "pol_interval: 250ms") \
               .replace("stream: CDC", "stream: CDC\n  bogus: 1") \
               .replace("{name: invoices, incrementing_column: id}",
                        "{name: invoices, mode: sideways}")
    text += "  - {name: two, type: sql_poll, tables: [{name: t}], batch_size: lots}\n"
    errs = errors_of(text)
    joined = "\n".join(errs)
    assert "adapters[0].pol_interval: unknown key" in joined
    assert "nats.bogus: unknown key" in joined
    assert "adapters[0].tables[0].mode:" in joined
    assert "adapters[1].url: required key is missing" in joined
    assert "adapters[1].batch_size:" in joined
    assert len(errs) >= 5


def test_unknown_adapter_type_names_the_path() -> None:
    errs = errors_of("adapters:\n  - {name: a, type: carrier_pigeon}\n")
    assert any(e.startswith("adapters[0]") for e in errs), errs


def test_invalid_yaml_names_line_and_column() -> None:
    errs = errors_of("nats:\n  url: [unclosed\n")
    assert len(errs) == 1
    assert errs[0].startswith("cfg.yaml:")
    assert "invalid YAML" in errs[0]


def test_env_interpolation_with_default_and_escape() -> None:
    text = GOOD.replace("sqlite:///legacy.db", "sqlite:///${DB_DIR:-/var/db}/${DB_NAME}.db")
    text = text.replace("stream: CDC", "stream: ${STREAM}")
    cfg = parse_config(text, env={"DB_NAME": "erp", "STREAM": "ORDERS"})
    assert cfg.adapters[0].url == "sqlite:////var/db/erp.db"
    assert cfg.nats.stream == "ORDERS"
    cfg2 = parse_config(GOOD.replace("nats://127.0.0.1:4222", "nats://$${literal}"), env={})
    assert cfg2.nats.url == "nats://${literal}"


def test_unset_variable_is_an_error_naming_it_and_its_path() -> None:
    errs = errors_of(GOOD.replace("sqlite:///legacy.db", "mysql://app:${ERP_PASSWORD}@h/erp"))
    assert errs == ["adapters[0].url: environment variable ERP_PASSWORD is not set"]


def test_secret_values_never_appear_in_errors() -> None:
    secret = "s3cr3t-Value-42"
    text = GOOD.replace("stream: CDC", "stream: ${S}").replace("250ms", "${S}")
    errs = errors_of(text, env={"S": secret})
    assert errs  # both values are invalid for their fields
    assert all(secret not in e for e in errs)
    cfg = parse_config(GOOD.replace("legacy.db", "${PW}.db"), env={"PW": secret})
    assert secret in cfg.secrets
    assert secret not in repr(cfg)


def test_duplicate_and_reserved_adapter_names() -> None:
    text = GOOD + "  - {name: erp, type: sql_poll, url: 'sqlite://', tables: [{name: t}]}\n"
    text += "  - {name: outbox, type: sql_poll, url: 'sqlite://', tables: [{name: t}]}\n"
    errs = "\n".join(errors_of(text))
    assert "duplicate adapter name 'erp'" in errs
    assert "'outbox' is reserved" in errs


def test_bad_adapter_name_reported_with_the_other_errors() -> None:
    text = GOOD + "  - {name: Bad.Name, type: sql_poll, url: 'sqlite://', tables: [{name: t}],"
    text += " bogus: 1}\n"
    errs = errors_of(text)
    assert any(e.startswith("adapters[1].name: String should match pattern") for e in errs), errs
    assert "adapters[1].bogus: unknown key" in errs


def test_durations() -> None:
    for raw, seconds in [("5s", 5.0), ("100ms", 0.1), ("2m", 120.0), ("1h", 3600.0), (3, 3.0)]:
        cfg = parse_config(GOOD.replace("250ms", str(raw)), env={})
        assert cfg.adapters[0].poll_interval == seconds
    assert "poll_interval" in errors_of(GOOD.replace("250ms", "soon"))[0]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read config file" in info.value.errors[0]


def test_duplicate_window_must_fit_max_age() -> None:
    text = GOOD.replace("stream: CDC", "stream: CDC\n  max_age: 5m\n  duplicate_window: 10m")
    errs = errors_of(text)
    assert any("duplicate_window cannot exceed max_age" in e for e in errs), errs
    ok = parse_config(GOOD.replace("stream: CDC", "stream: CDC\n  max_age: 1d"), env={})
    assert ok.nats.max_age == 86400.0


def test_one_nats_auth_method_at_a_time() -> None:
    both = GOOD.replace("stream: CDC", "stream: CDC\n  creds_file: /s/b.creds\n"
                                       "  nkey_seed_file: /s/b.nk\n  password: ${PW}")
    errs = errors_of(both, {"PW": "hunter2"})
    assert any("nats: " in e and "one way to authenticate, not user/password and "
               "nkey_seed_file and creds_file" in e for e in errs), errs
    assert not any("hunter2" in e for e in errs)
    one = parse_config(GOOD.replace("stream: CDC", "stream: CDC\n  creds_file: /s/b.creds"),
                       env={})
    assert one.nats.creds_file == Path("/s/b.creds")


def test_passwords_inside_urls_are_secrets() -> None:
    cfg = parse_config(
        "nats: {url: ['nats://u:natspw@h1:4222', 'nats://tok123@h2:4222']}\n"
        "outbox: {url: 'postgresql://o:outpw%40x@db/o'}\n"
        "adapters:\n"
        "  - {name: a, type: sql_poll, url: 'mysql+pymysql://app:erppw@h/erp',"
        " tables: [{name: t, incrementing_column: id}]}\n", env={})
    assert {"natspw", "tok123", "outpw@x", "erppw"} <= cfg.secrets


def test_poll_intervals_have_a_floor() -> None:
    for block in ("{name: a, type: sql_poll, url: 'sqlite:///x', poll_interval: 0,"
                  " tables: [{name: t, incrementing_column: id}]}",
                  "{name: a, type: sql_poll, url: 'sqlite:///x', tables: [{name: t,"
                  " incrementing_column: id, poll_interval: 10ms}]}",
                  "{name: a, type: files, path: /d, format: csv, poll_interval: 0s}"):
        errs = errors_of(f"adapters:\n  - {block}\n")
        assert any("poll_interval: must be at least 50ms" in e for e in errs), errs
