"""Print docs/configuration.md: the config reference, generated from the pydantic models.

Run from the repository root and commit the output::

    .venv/bin/python docs/gen_config_reference.py > docs/configuration.md

``tests/fast/test_docs.py`` fails when the committed page differs from this script's output,
so a config change without a regenerated reference does not pass CI.

Design: the models are the single source. Sections and keys come from
:class:`cdc_bridge.config.BridgeConfig` and the config model of every adapter type in
:data:`cdc_bridge.adapters.registry.REGISTRY`, walked recursively (nested models get their own
table). Types, defaults and constraints are read from the pydantic fields. A key's
meaning is the ``#:`` comment written above it in the model's source; keys without one
take their text from :data:`MEANINGS` below. A key with neither is printed as
``(undocumented)``, which the test rejects: document a new key where it is declared.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.adapters.registry import REGISTRY
from cdc_bridge.config import BridgeConfig
from cdc_bridge.kernel.model import parse_duration

UNDOCUMENTED = "(undocumented)"

#: Meanings of keys declared without a ``#:`` comment, as ``Model.key``.
MEANINGS: dict[str, str] = {
    "BridgeConfig.state_dir": "Directory for the bridge's own state: the default SQLite "
    "outbox (`outbox.db`), the embedded nats-server's store (`nats/`), `control.db`, "
    "sql_poll diff state (`sql_poll/`) and files snapshot state (`files/`).",
    "BridgeConfig.nats": "Where events are published (see `nats`).",
    "BridgeConfig.outbox": "The outbox store and the relay (see `outbox`).",
    "BridgeConfig.log": "Logging (see `log`).",
    "BridgeConfig.http": "The operations HTTP endpoint (see `http`).",
    "BridgeConfig.adapters": "The sources; each item is one adapter block, chosen by its "
    "`type` (see *Adapters* below). Names must be unique.",
    "EmbeddedNats.host": "Address the embedded nats-server listens on.",
    "EmbeddedNats.port": "Port of the embedded nats-server (`0`: any free port).",
    "TlsConfig.ca_file": "CA bundle (PEM) used to verify the server.",
    "TlsConfig.cert_file": "Client certificate (PEM), for servers that require one.",
    "TlsConfig.key_file": "Private key of `cert_file` (if not in the same file).",
    "NatsConfig.embedded": "The embedded nats-server's listen address (see `nats.embedded`).",
    "NatsConfig.stream": "JetStream stream name; created, or updated to match these "
    "settings, at start.",
    "NatsConfig.subject_prefix": "First token(s) of every subject; the stream captures "
    "`<subject_prefix>.>`.",
    "NatsConfig.user": "User name (with `password`).",
    "NatsConfig.password": "Password for `user`; masked in logs.",
    "NatsConfig.token": "Authentication token; masked in logs.",
    "NatsConfig.nkey_seed_file": "File holding an NKey seed (`SU...`).",
    "NatsConfig.creds_file": "A `.creds` file (user JWT and NKey seed).",
    "NatsConfig.tls": "TLS settings: CA and client certificate (see `nats.tls`).",
    "NatsConfig.replicas": "Stream replicas (a clustered NATS).",
    "NatsConfig.storage": "Stream storage; cannot be changed on an existing stream.",
    "NatsConfig.max_age": "Stream retention by age (`0`: unlimited).",
    "NatsConfig.max_bytes": "Stream retention by size in bytes (`-1`: unlimited).",
    "NatsConfig.connect_timeout": "Timeout of one connection attempt (whole seconds, at "
    "least 1).",
    "NatsConfig.ack_timeout": "A publish without its PubAck after this long fails and is "
    "retried.",
    "HttpConfig.enabled": "Serve the status page (`/`), `/healthz`, `/readyz`, `/metrics`, "
    "`/status`, `/api/overview`, `POST /snapshot`.",
    "HttpConfig.host": "Listen address.",
    "HttpConfig.port": "Listen port.",
    "LogConfig.level": "Log level (`--log-level` overrides).",
    "LogConfig.format": "`text` or JSON lines (`--log-format` overrides).",
    "AdapterConfig.name": "Unique adapter name, `[a-z0-9][a-z0-9_-]*`; the second subject "
    "token and the key of its checkpoint. `outbox` is reserved.",
    "AdapterConfig.type": "Adapter type.",
    "SqlPollConfig.poll_interval": "Time between polls of a table that is caught up "
    "(tables can override); at least 50ms.",
    "SqlPollConfig.batch_size": "Rows per page; each page is one outbox commit (tables can "
    "override).",
    "SqlPollConfig.tables": "The tables (or queries) to poll, at least one; names unique.",
    "PollTable.mode": "How changes are found: `incrementing`, `timestamp`, "
    "`timestamp+incrementing`, `diff`, or `query` (a custom SELECT).",
    "PollTable.incrementing_column": "Column that only grows (`incrementing` mode: "
    "defaults to `id`).",
    "PollTable.timestamp_column": "Last-modified column (timestamp modes); rows where it "
    "is NULL are not read.",
    "PollTable.query_mode": "`mode: query` only (required there): the mode the query is "
    "polled with.",
    "PollTable.poll_interval": "Overrides the adapter's `poll_interval` (at least 50ms).",
    "PollTable.batch_size": "Overrides the adapter's `batch_size`.",
    "PollTable.columns": "Column rules: include, exclude, mask.",
    "ColumnRules.include": "Only these columns appear in `before`/`after` (unset: all).",
    "ColumnRules.exclude": "Columns dropped from `before`/`after`.",
    "ColumnRules.mask": "Columns replaced by `sha256:<hex of sha256(mask_salt + value)>`; "
    "NULL stays null. Masked key columns are masked in `key` too.",
    "ColumnRules.mask_salt": "Salt of the mask hash (keep it secret: `${VAR}`).",
    "FilesConfig.path": "The folder (`drop`, `snapshot`) or the file (`tail`).",
    "FilesConfig.pattern": "Glob of file names in `path` (`drop`, `snapshot`; required "
    "there, not recursive, case-sensitive); not allowed with `tail`.",
    "FilesConfig.format": "Record format.",
    "FilesConfig.mode": "`drop`: each new file once; `tail`: follow one growing file; "
    "`snapshot`: compare full extracts by key.",
    "FilesConfig.csv": "CSV options (see `csv`).",
    "FilesConfig.jsonl": "JSON-lines options (see `jsonl`).",
    "FilesConfig.fixed_width": "The record layout (required with `format: fixed_width`).",
    "FilesConfig.table": "The events' table (subject token); `{stem}` is replaced by the "
    "file name without extension. Unset: the adapter name.",
    "FilesConfig.columns": "Column rules: include, exclude, mask.",
    "FilesConfig.after": "What happens to a completed file (`drop`, `snapshot`).",
    "FilesConfig.poll_interval": "Time between scans of the folder or file; at least "
    "50ms.",
    "FilesConfig.batch_size": "Records per outbox commit.",
    "CsvOptions.encoding": "Python codec name of the file (`utf-8`, `cp1252`, `latin-1`, "
    "...); a UTF-8 BOM overrides it.",
    "CsvOptions.delimiter": "Field separator (one ASCII character).",
    "CsvOptions.quotechar": "Quote character (one ASCII character).",
    "CsvOptions.escapechar": "Escape character (unset: none).",
    "CsvOptions.doublequote": "A doubled quote inside a quoted field is one quote.",
    "CsvOptions.skipinitialspace": "Ignore blanks right after a delimiter.",
    "CsvOptions.columns": "Column names; required when `header: false`.",
    "JsonlOptions.encoding": "Python codec name of the file; a UTF-8 BOM overrides it.",
    "FixedField.name": "Field (column) name.",
    "FixedField.length": "Length in characters.",
    "FixedField.type": "Value type.",
    "FixedWidthOptions.encoding": "Python codec name of the file (`cp1252`, `cp037`, ...); "
    "a UTF-8 BOM overrides it.",
    "FixedWidthOptions.fields": "The layout, at least one field; names unique.",
    "AfterProcessing.action": "`archive`: move to `archive_dir`; `delete`; `leave` in place "
    "(remembered, never read again).",
    "PostgresConfig.exclude_tables": "Tables left out (e.g. of a `schema.*`).",
    "PostgresConfig.snapshot": "Rows present before streaming starts: `initial` (copy "
    "them as `op: r` on first start), `never`, `when_needed` (also after the slot was "
    "lost).",
    "PostgresConfig.slot": "Replication slot name (default `cdc_bridge_<name>`).",
    "PostgresConfig.publication": "Publication name (default `cdc_bridge_<name>`).",
    "PostgresConfig.connect_timeout": "Timeout of one connection attempt.",
    "OutboxTableConfig.poll_interval": "Time between polls when the last poll found "
    "fewer than `batch_size` rows; at least 50ms.",
    "OutboxTableConfig.batch_size": "Rows read per poll; one outbox commit each.",
    "PgTable.columns": "Column rules: include, exclude, mask.",
}


# --- reading the models -------------------------------------------------------------


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """``#:`` comments above each field in the source of ``model`` and its bases."""
    out: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        lines = src.splitlines()
        tree = ast.parse(src)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                text: list[str] = []
                i = node.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#:"):
                    text.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                if text:
                    out[node.target.id] = _rst_to_md(" ".join(text))
    return out


def _rst_to_md(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _owner(model: type[BaseModel], field: str) -> str:
    for cls in model.__mro__:
        if field in getattr(cls, "__annotations__", {}):
            return cls.__name__
    return model.__name__


def _is_duration(meta: list[Any]) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in meta)


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """Strip ``Annotated``: the bare type and its metadata."""
    meta: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        tp, meta = args[0], meta + list(args[1:])
    return tp, meta


def _models_in(tp: Any) -> Iterator[type[BaseModel]]:
    tp, _meta = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp
        return
    for arg in typing.get_args(tp):
        yield from _models_in(arg)


def _type_name(tp: Any, meta: list[Any]) -> str:
    tp, more = _unwrap(tp)
    meta = meta + more
    if _is_duration(meta):
        return "duration"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(dict.fromkeys(_type_name(a, []) for a in parts))
    if origin is list:
        (arg,) = typing.get_args(tp)
        inner = _type_name(arg, [])
        return f"list of ({inner})" if " or " in inner else f"list of {inner}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k, [])} to {_type_name(v, [])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    simple: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                              Path: "path"}
    return simple.get(tp) or str(getattr(tp, "__name__", tp))


def _constraints(meta: list[Any], is_list: bool) -> str:
    out: list[str] = []
    unit = "item" if is_list else "character"
    lo = next((m.min_length for m in meta if getattr(m, "min_length", None) is not None), None)
    hi = next((m.max_length for m in meta if getattr(m, "max_length", None) is not None), None)
    if lo is not None and lo == hi:
        out.append(f"exactly {lo} {unit}{'s' if lo != 1 else ''}")
    else:
        if lo is not None:
            out.append(f"at least {lo} {unit}{'s' if lo != 1 else ''}")
        if hi is not None:
            out.append(f"at most {hi} {unit}{'s' if hi != 1 else ''}")
    for m in meta:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sign} {value:,}" if isinstance(value, int) else f"{sign} {value}")
        pattern = getattr(m, "pattern", None)
        if pattern:
            choice = re.fullmatch(r"\^\(([\w|]+)\)\$", pattern)
            out.append("one of " + ", ".join(f"`{c}`" for c in choice.group(1).split("|"))
                       if choice else f"matches `{pattern}`")
    return ", ".join(out)


def _duration_text(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return f"`{value!r}`" if value == [] or value == {} else "(see below)"
    value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, BaseModel):
        return "(see below)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and _is_duration(field.metadata):
        return f"`{_duration_text(value)}`"
    if isinstance(value, str) and value == "":
        return '`""`'
    if isinstance(value, int) and not isinstance(value, bool):
        return f"`{value:,}`".replace(",", "_") if abs(value) >= 10_000 else f"`{value}`"
    return f"`{value}`"


# --- rendering ----------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\\\\|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel], path: str, skip: set[str] | None = None
           ) -> tuple[list[str], list[tuple[str, type[BaseModel]]]]:
    """Rows of one model's table, and the nested models to document after it."""
    notes = _comments(model)
    rows = ["| Key | Type | Default | Meaning |", "|-----|------|---------|---------|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if skip and name in skip:
            continue
        meaning = notes.get(name) or MEANINGS.get(f"{_owner(model, name)}.{name}") \
            or MEANINGS.get(f"{model.__name__}.{name}") or UNDOCUMENTED
        typ = _type_name(field.annotation, list(field.metadata))
        limits = _constraints(list(field.metadata), typ.startswith("list"))
        if limits:
            typ += f" ({limits})"
        default = _default(field)
        rows.append(f"| `{name}` | {_cell(typ)} | {default} | {_cell(meaning)} |")
        origin = typing.get_origin(_unwrap(field.annotation)[0])
        suffix = "[]" if origin is list or (origin in (typing.Union, types.UnionType) and any(
            typing.get_origin(a) is list for a in typing.get_args(field.annotation))) else ""
        for sub in _models_in(field.annotation):
            nested.append((f"{path}.{name}{suffix}" if path else f"{name}{suffix}", sub))
    return rows, nested


def _section(model: type[BaseModel], path: str, level: int, out: list[str],
             skip: set[str] | None = None) -> None:
    rows, nested = _table(model, path, skip)
    out.extend(rows)
    out.append("")
    for sub_path, sub in nested:
        out.append(f"{'#' * min(level + 1, 6)} `{sub_path}`")
        out.append("")
        _section(sub, sub_path, level + 1, out)


INTRO = """\
# Configuration reference

<!-- Generated by docs/gen_config_reference.py from the config models: do not edit by
hand. Regenerate with `.venv/bin/python docs/gen_config_reference.py > docs/configuration.md`;
tests/fast/test_docs.py fails when this page and the models disagree. -->

One YAML file configures the daemon and every command (`cdc-bridge run -c FILE`,
`validate`, `init`, `status`, `outbox`, ...). It is parsed once, strictly: every key
below is the complete list, and anything else is an error.

```yaml
state_dir: /var/lib/cdc-bridge
nats:
  url: [nats://nats-1:4222, nats://nats-2:4222]
  creds_file: /etc/cdc-bridge/bridge.creds
  stream: CDC
  subject_prefix: cdc
outbox:
  url: sqlite:////var/lib/cdc-bridge/outbox.db   # four slashes: an absolute path
log: {level: INFO, format: json}
http: {enabled: true, host: 0.0.0.0, port: 9180}
adapters:
  - name: erp
    type: sql_poll
    url: mysql+pymysql://cdc:${ERP_PASSWORD}@legacy-host/erp
    tables:
      - {name: invoices, mode: timestamp+incrementing, timestamp_column: updated_at,
         incrementing_column: id}
```

## Environment variables

Every string value may hold `${VAR}` or `${VAR:-default}`; they are replaced by the
environment variable before validation, so secrets stay out of the file.

| Written | Becomes |
|---------|---------|
| `${VAR}` | the value of `VAR`; an error (naming `VAR` and the key's path) if unset |
| `${VAR:-text}` | the value of `VAR` if set (even empty), else `text` |
| `$${VAR}` | the literal text `${VAR}` |

Only string values are interpolated; keys never are. The result is a string, which
number and boolean keys accept when it reads as one (`port: ${HTTP_PORT:-9180}`). Note
that `${VAR:-text}` uses `VAR` even when it is set to the empty string. Inside a YAML
flow mapping or list (`{...}`, `[...]`) a `${...}` must be quoted (`{mask_salt:
"${SALT}"}`), since `{` is YAML syntax there; in block style it needs no quotes. Every
value taken from the environment, `nats.password` and `nats.token` are masked in logs
and error output, and so are passwords inside URLs.

## Durations

Keys of type *duration* take `250ms`, `5s`, `2m`, `1h`, `1d` or a plain number of
seconds (`0.5`). Negative values are errors.

## Errors

`cdc-bridge validate -c FILE` prints `FILE: OK; adapters: ...` and exits 0, or prints
every problem at once, one per line as `path: message`, and exits 2. Other commands
report an invalid file the same way with exit code 2.

```text
$ cdc-bridge validate -c bad.yaml
bad.yaml: configuration is invalid:
  nats.password: environment variable NATS_PASSWORD is not set
  adapters[0].batch_size: Input should be a valid integer, unable to parse string as an integer
  adapters[0].tables[0]: mode timestamp needs 'timestamp_column'
  adapters[0].pol_interval: unknown key
  adapters[1]: mode drop needs a glob 'pattern' of files in 'path'
```

- Paths use dots for keys and `[i]` for list items (0-based): `adapters[1].tables[0].mode`.
- `unknown key`: a misspelt or unsupported key. `required key is missing`: a key marked
  **required** below is absent.
- Rules that involve several keys (a mode that needs a column, a format that needs a
  layout) are reported on the block that holds them, as `adapters[0].tables[0]` and
  `adapters[1]` above.
- Broken YAML is reported with its line and column: `bad.yaml:4:7: invalid YAML: ...`.
- Input values are never printed, so a secret cannot leak through an error.

Checks that need the source (does the table exist, may the role replicate) run when
the daemon or `cdc-bridge init` starts, not in `validate`.

In the tables below, *unset* means the key is absent (null); *(see below)* means a
nested block with its own table.
"""

SECTIONS = ["nats", "outbox", "log", "http", "tracing", "group"]
DOCS = Path(__file__).resolve().parent
README = DOCS.parent / "README.md"
#: The README's source table sits between these two lines and is generated.
TABLE_BEGIN = "<!-- sources: generated by docs/gen_config_reference.py --write -->"
TABLE_END = "<!-- end of sources -->"


def guide(type_name: str) -> str | None:
    """The guide of a source type, ``sources/<type>.md`` relative to docs/, if written."""
    rel = f"sources/{type_name}.md"
    return rel if (DOCS / rel).exists() else None


def summary(type_name: str) -> str:
    """The guide's ``**For:**`` paragraph, on one line."""
    rel = guide(type_name)
    text = (DOCS / rel).read_text(encoding="utf-8") if rel else ""
    match = re.search(r"^\*\*For:\*\* (.+?)(?:\n\n|\Z)", text, re.M | re.S)
    return " ".join(match.group(1).split()) if match else UNDOCUMENTED


def source_table() -> str:
    """README's table of sources: one row per registered type, from its guide."""
    rows = ["| `type` | For | Page |", "|---|---|---|"]
    for type_name in REGISTRY:
        rel = guide(type_name)
        page = f"[docs/{rel}](docs/{rel})" if rel else UNDOCUMENTED
        rows.append(f"| `{type_name}` | {summary(type_name)} | {page} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme: str) -> str:
    begin, end = readme.index(TABLE_BEGIN), readme.index(TABLE_END)
    return readme[:begin] + TABLE_BEGIN + "\n" + source_table() + readme[end:]


def render() -> str:
    out: list[str] = [INTRO.rstrip("\n"), "", "## Top level", ""]
    rows, _nested = _table(BridgeConfig, "")
    out.extend(rows)
    out.append("")
    for name in SECTIONS:
        field = BridgeConfig.model_fields[name]
        model = next(_models_in(field.annotation))
        out += [f"## `{name}`", ""]
        _section(model, name, 2, out)
    out += ["## Adapters", "",
            "Each item of `adapters` is one block; `type` selects its keys. Keys shared by "
            "every type:", ""]
    rows, _ = _table(AdapterConfig, "adapters[]")
    out.extend(rows)
    out.append("")
    for type_name in REGISTRY:
        model = REGISTRY[type_name].config_model
        doc = guide(type_name)
        out += [f"### `type: {type_name}`", ""]
        if doc:
            out += [f"Guide: [{doc}]({doc}).", ""]
        _section(model, "adapters[]", 3, out, skip={"name", "type"})
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:  # docs/configuration.md and README's table of sources
        (DOCS / "configuration.md").write_text(render(), encoding="utf-8")
        README.write_text(readme_with_table(README.read_text(encoding="utf-8")),
                          encoding="utf-8")
    else:
        sys.stdout.write(render())
