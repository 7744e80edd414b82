"""Configuration: YAML file -> environment interpolation -> strict, frozen pydantic models.

Loading is three pure steps, each collecting every problem before failing:

1. YAML parse (errors carry file, line and column);
2. ``${VAR}`` / ``${VAR:-default}`` interpolation in string values (``$${`` escapes a
   literal ``${``); an unset variable without default is an error naming it and the
   path where it is used; the value itself is never echoed;
3. pydantic validation; unknown keys, wrong types and missing keys are reported all at
   once, each as ``path: message`` with paths such as ``adapters[1].tables[0].mode``.

Input values are never part of the messages, so secrets interpolated from the
environment cannot leak through a validation error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.adapters.registry import REGISTRY
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.kernel.model import Duration, StrictModel
from cdc_bridge.kernel.subject_check import check_subjects
from cdc_bridge.relay.settings import (
    EmbeddedNats,
    NatsConfig,
    OutboxConfig,
    TlsConfig,
    TracingConfig,
)

_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
RESERVED_ADAPTER_NAMES = frozenset({"outbox"})

__all__ = ["BridgeConfig", "EmbeddedNats", "NatsConfig", "OutboxConfig", "TlsConfig",
           "TracingConfig", "load_config", "parse_config"]


class HttpConfig(StrictModel):
    """The operations endpoint (the status page, /healthz, /readyz, /metrics, /status):
    off unless enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9180, ge=0, le=65535)
    #: Bearer token for requests that change state (``POST /snapshot``): sent as
    #: ``Authorization: Bearer <token>``. Required for them whenever it is set; unset,
    #: they are refused (403) when ``host`` is not a loopback address. Take it from the
    #: environment (``${CDC_HTTP_TOKEN}``); it is redacted like every secret.
    token: str | None = Field(default=None, min_length=16)


class LogConfig(StrictModel):
    level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    format: str = Field(default="text", pattern="^(text|json)$")


class GroupConfig(StrictModel):
    """Group mode (docs/group.md): several daemons on one PostgreSQL outbox share the
    adapters and the relay through leases. Off: a second daemon on the same outbox
    refuses to start."""

    #: Join the group of daemons on this outbox (needs ``outbox.url: postgresql://``).
    enabled: bool = False
    #: How long a lease (and a member's heartbeat) lasts without renewal, by the
    #: database clock: the longest a resource of a dead member stays unowned is about
    #: ``lease + renew_every``.
    lease: Duration = 10.0
    #: How often a member heartbeats, renews its leases and rebalances.
    renew_every: Duration = 3.0
    #: This daemon's id in the group; default ``<hostname>-<random>``, new at each start.
    member_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,60}$")

    @model_validator(mode="after")
    def _renew_within_lease(self) -> GroupConfig:
        if self.lease < 2.0:
            raise ValueError("group.lease: at least 2s")
        if not 0.1 <= self.renew_every <= self.lease / 2:
            raise ValueError("group.renew_every: between 100ms and half of group.lease")
        return self


def _adapter_union() -> Any:
    models = tuple(t.config_model for t in REGISTRY.values())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


AdapterConfigUnion = _adapter_union()


class BridgeConfig(StrictModel):
    state_dir: Path = Path(".cdc-bridge")
    nats: NatsConfig = NatsConfig()
    outbox: OutboxConfig = OutboxConfig()
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    #: OpenTelemetry spans over OTLP (off by default; docs/tracing.md).
    tracing: TracingConfig = TracingConfig()
    #: Group mode: several daemons on one PostgreSQL outbox (off by default; docs/group.md).
    group: GroupConfig = GroupConfig()
    adapters: list[AdapterConfigUnion] = Field(default_factory=list)  # type: ignore[valid-type]
    _secrets: frozenset[str] = PrivateAttr(default=frozenset())

    @property
    def secrets(self) -> frozenset[str]:
        """Values to redact from logs: interpolated variables, passwords, tokens."""
        known = {self.nats.password or "", self.nats.token or "", self.http.token or ""}
        urls = [*self.nats.servers(), self.outbox.url or ""]
        for adapter in self.adapter_configs:  # url/dsn keys of every source
            urls += [v for v in adapter.model_dump().values() if isinstance(v, str)]
        known |= {_url_password(u) for u in urls if "@" in u}
        return frozenset(self._secrets | known) - {""}

    @model_validator(mode="after")
    def _unique_names(self) -> BridgeConfig:
        seen: set[str] = set()
        problems: list[str] = []
        for i, adapter in enumerate(self.adapter_configs):
            name = adapter.name
            if name in RESERVED_ADAPTER_NAMES:
                problems.append(f"adapters[{i}].name: {name!r} is reserved")
            if name in seen:
                problems.append(f"adapters[{i}].name: duplicate adapter name {name!r}")
            seen.add(name)
        if self.group.enabled and not self.outbox_url().startswith(
                ("postgresql://", "postgres://")):
            problems.append("group.enabled: group mode needs a PostgreSQL outbox "
                            "(outbox.url: postgresql://...); with the SQLite outbox the "
                            "bridge runs as a single instance")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def adapter_configs(self) -> list[AdapterConfig]:
        return list(self.adapters)

    def outbox_url(self) -> str:
        return self.outbox.url or f"sqlite:///{self.state_dir / 'outbox.db'}"


def _url_password(url: str) -> str:
    """The password in ``scheme://user:password@host`` (or a lone token before ``@``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if parts.password:
        return unquote(parts.password)
    if parts.username and parts.scheme.startswith(("nats", "tls", "ws")):
        return unquote(parts.username)  # nats://TOKEN@host
    return ""


# --- loading -------------------------------------------------------------------------


def format_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def interpolate(
    value: Any,
    env: Mapping[str, str],
    errors: list[str],
    loc: tuple[Any, ...] = (),
    used: set[str] | None = None,
) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree.

    Values taken from ``env`` are added to ``used`` (they may be secrets).
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env, errors, (*loc, k), used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, errors, (*loc, i), used) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        escaped, name, default = match.group(1), match.group(2), match.group(3)
        if escaped:
            return match.group(0)[1:]
        if name in env:
            if used is not None:
                used.add(env[name])
            return env[name]
        if default is not None:
            return default
        errors.append(f"{format_path(loc)}: environment variable {name} is not set")
        return ""

    return _VAR.sub(sub, value)


def _strip_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the discriminator tag pydantic inserts after ``adapters[i]``."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        if i >= 2 and loc[0] == "adapters" and i == 2 and part in REGISTRY:
            continue
        out.append(part)
    return tuple(out)


def _pydantic_messages(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = _strip_tags(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{format_path(loc)}: {msg}")
    return lines


def parse_config(
    text: str, source: str = "<config>", env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Parse YAML text into a :class:`BridgeConfig` or raise :class:`ConfigError`."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys"])
    errors: list[str] = []
    used: set[str] = set()
    raw = interpolate(raw, os.environ if env is None else env, errors, (), used)
    try:
        config = BridgeConfig.model_validate(raw)
    except ValidationError as e:
        errors.extend(_pydantic_messages(e))
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    problems = subject_problems(config)
    if problems:
        raise ConfigError(problems)
    config._secrets = frozenset(used)
    return config


def subject_problems(config: BridgeConfig) -> list[str]:
    """The subject templates' problems across tables and adapters (docs/subjects.md)."""
    return check_subjects(config.nats.subject_prefix, {
        a.name: (f"adapters[{i}]", a.subject_scopes())
        for i, a in enumerate(config.adapter_configs)})


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> BridgeConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read config file: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: config file is not UTF-8 text"]) from None
    return parse_config(text, str(p), env)
