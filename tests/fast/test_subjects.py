"""Subject templates: parsing, rendering with sanitising, routing by table, and the
config-load checks (unknown tokens, wildcards, empty tokens, reserved spaces, collisions)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cdc_bridge.adapters.subjects import subject_router
from cdc_bridge.config import parse_config
from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.subjects import ANY, SubjectRouter, SubjectScope, parse_template
from cdc_bridge.outbox.writer import encode_batch

pytestmark = pytest.mark.fast


def _ev(op: str = "c", table: str = "invoices", schema: str | None = None,
        before: dict[str, Any] | None = None, after: dict[str, Any] | None = None
        ) -> ChangeEvent:
    return ChangeEvent("erp", table, op, "p:1", schema=schema, key={"id": 1},  # type: ignore[arg-type]
                       before=before, after=after)


def _router(text: str, table: str = ANY) -> SubjectRouter:
    schema = ANY if table == ANY else None
    router = SubjectRouter.build("erp", [SubjectScope(schema, table, parse_template(text))])
    assert router is not None
    return router


def test_render_tokens_and_sanitising() -> None:
    r = _router("erp.{col:tenant}.{schema}.{table}.{op}")
    ev = _ev(after={"tenant": "ac.me *>"}, table="in voices")
    assert r.subject(ev, "cdc") == "cdc.erp.ac_me___._.in_voices.c"
    assert r.subject(_ev(after={"tenant": None}), "cdc") == "cdc.erp._._.invoices.c"
    assert r.subject(_ev(after={}), "cdc") == "cdc.erp._._.invoices.c"
    assert r.subject(_ev(after={"tenant": ""}), "cdc") == "cdc.erp._._.invoices.c"
    assert r.subject(_ev(after={"tenant": 42}), "a.b") == "a.b.erp.42._.invoices.c"
    assert r.subject(_ev(after={"tenant": True}), "cdc") == "cdc.erp.true._.invoices.c"
    assert r.subject(_ev("t"), "cdc") == "cdc.erp._._.invoices.t"
    assert _router("{adapter}.x-{table}.all").subject(_ev(), "cdc") == "cdc.erp.x-invoices.all"


def test_column_image_rule() -> None:
    """Updates and deletes read the before image when it has the column; else after."""
    r = _router("erp.{col:tenant}.{table}.{op}")
    moved = _ev("u", before={"tenant": "acme"}, after={"tenant": "globex"})
    assert r.subject(moved, "cdc") == "cdc.erp.acme.invoices.u"
    key_only = _ev("u", before={"id": 1}, after={"id": 1, "tenant": "globex"})
    assert r.subject(key_only, "cdc") == "cdc.erp.globex.invoices.u"
    assert r.subject(_ev("d", before={"tenant": "acme"}), "cdc") == "cdc.erp.acme.invoices.d"
    assert r.subject(_ev("d", before={"id": 1}), "cdc") == "cdc.erp._.invoices.d"
    assert r.subject(_ev("c", after={"tenant": "acme"}), "cdc") == "cdc.erp.acme.invoices.c"


def test_router_lookup_and_filter() -> None:
    router = SubjectRouter.build("shop", [
        SubjectScope("public", "orders", parse_template("shop.orders.{op}")),
        SubjectScope("public", ANY, parse_template("shop.{table}.{op}")),
        SubjectScope("sales", "x", None),
    ])
    assert router is not None
    assert router.subject(_ev(table="orders", schema="public"), "cdc") == "cdc.shop.orders.c"
    assert router.subject(_ev(table="lines", schema="public"), "cdc") == "cdc.shop.lines.c"
    assert router.subject(_ev(table="x", schema="sales"), "cdc") == "cdc.erp.sales.x.c"
    assert router.bound("cdc", "sales", "x") is None
    assert router.filter_for("cdc", "public", "lines") == "cdc.shop.lines.*"
    assert _router("erp.t{col:x}.{table}.{op}").filter_for("cdc", None, "inv") == \
        "cdc.erp.*.inv.*"
    assert SubjectRouter.build("erp", [SubjectScope(ANY, ANY, None)]) is None


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("erp..{op}", "empty token"),
    (".erp.{op}", "empty token"),
    ("erp.{op}.", "empty token"),
    ("erp.*.{op}", "wildcards"),
    ("erp.>", "wildcards"),
    ("erp.{tabel}.{op}", "unknown token {tabel}"),
    ("erp.{col:}.{op}", "needs a column name"),
    ("erp.{table.{op}", "brace"),
    ("erp.a b.{op}", "fixed text"),
    ("erp.{table}", "needs {op}"),
    ("_dlq.{table}.{op}", "reserved"),
    ("outbox.{table}.{op}", "reserved"),
    ("{table}.x.{op}", "first token"),
    ("{col:tenant}.{table}.{op}", "first token"),
])
def test_parse_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace("*", r"\*")):
        parse_template(text)


def test_parse_accepts() -> None:
    assert parse_template("erp.{table}.all").kinds() == {"table"}
    assert parse_template("{adapter}.{table}.{op}").columns() == ()
    assert parse_template("erp.{col:tenant_id}.{table}.{op}").columns() == ("tenant_id",)


def _config(erp: str, shop: str = "", prefix: str = "cdc") -> str:
    return f"""
nats: {{subject_prefix: {prefix}}}
adapters:
  - name: erp
    type: sql_poll
    url: sqlite:///x.db
{erp}
  - name: shop
    type: postgres
    dsn: postgresql://u@h/d
    tables: [public.orders, "sales.*"]
{shop}
"""


TABLES = """    tables:
      - {name: invoices, mode: diff}
      - {name: customers, mode: diff}"""


def _errors(text: str) -> list[str]:
    try:
        parse_config(text)
    except ConfigError as e:
        return list(e.errors)
    return []


def test_config_accepts_tenant_template() -> None:
    config = parse_config(_config('    subject: "erp.{col:tenant}.{table}.{op}"\n' + TABLES,
                                  '    subject: "shop.{schema}.{table}.{op}"'))
    router = subject_router(config.adapter_configs[0])
    assert router is not None
    ev = _ev(after={"tenant": "acme"})
    assert router.subject(ev, "cdc") == "cdc.erp.acme.invoices.c"
    assert subject_router(parse_config(_config(TABLES)).adapter_configs[0]) is None


@pytest.mark.parametrize(("erp", "shop", "wanted"), [
    ('    subject: "erp.{col:tenant}.{op}"\n' + TABLES, "", "can render the same subject"),
    ('    subject: "erp.{tabel}.{op}"\n' + TABLES, "", "adapters[0].subject: subject template "
     "'erp.{tabel}.{op}': unknown token {tabel}"),
    (TABLES + '\n      - {name: x, mode: diff, subject: "erp.*.{op}"}', "",
     "adapters[0].tables[2].subject: subject template 'erp.*.{op}': wildcards"),
    ('    subject: "erp..{op}"\n' + TABLES, "", "empty token"),
    ('    subject: "cdc.{table}.{op}"\n' + TABLES, "", "relative to the prefix"),
    # per-table templates that meet on one subject
    (TABLES.replace("mode: diff}", 'mode: diff, subject: "erp.one.{op}"}'), "",
     "can render the same subject"),
    # a wildcard scope without {table}
    (TABLES, '    subject: "shop.{schema}.{op}"', "covers several tables"),
    # another adapter's default subjects
    ('    subject: "shop.public.{table}.{op}"\n' + TABLES, "", ""),
    ('    subject: "shop.public.orders.{op}"\n' + TABLES, '', "can render the same subject"),
    # two adapters' templates
    ('    subject: "x.{table}.{op}"\n' + TABLES, '    subject: "x.{table}.{op}"',
     "can render the same subject"),
    # sanitising that would merge two names
    ("""    subject: "erp.{table}.{op}"
    tables:
      - {name: a.b, schema: s, mode: diff}
      - {name: a_b, schema: s, mode: diff}""", "", "can render the same subject"),
])
def test_config_rejects(erp: str, shop: str, wanted: str) -> None:
    errors = _errors(_config(erp, shop))
    if not wanted:
        assert errors == []
        return
    assert any(wanted in e for e in errors), errors


def test_shared_subject_needs_both_sides() -> None:
    one = TABLES.replace("{name: customers, mode: diff}",
                         "{name: customers, mode: diff, allow_shared_subject: true}")
    assert _errors(_config('    subject: "erp.all.{op}"\n' + one))
    both = '    subject: "erp.all.{op}"\n    allow_shared_subject: true\n' + TABLES
    assert _errors(_config(both)) == []


def test_wildcard_excludes_tables_listed_on_their_own() -> None:
    shop = """    subject: "shop.{table}.{op}"
    tables:
      - public.orders
      - public.*"""
    text = _config(TABLES, "").replace("    tables: [public.orders, \"sales.*\"]\n", "")
    assert _errors(text + shop) == []


def test_encode_batch_templated_and_default() -> None:
    router = _router("erp.{col:tenant}.{table}.{op}", "invoices")
    events = [_ev(after={"tenant": "acme", "id": 1}), _ev(table="other")]
    batch = ChangeBatch(events, None)
    plain = encode_batch(batch, "cdc")
    templated = encode_batch(batch, "cdc", subjects=router)
    assert [m.subject for m in plain] == ["cdc.erp._.invoices.c", "cdc.erp._.other.c"]
    assert [m.subject for m in templated] == ["cdc.erp.acme.invoices.c", "cdc.erp._.other.c"]
    assert [(m.msg_id, m.payload) for m in plain] == [(m.msg_id, m.payload) for m in templated]


def test_render_is_cheap() -> None:
    """Rendering a bound template costs about a microsecond (no regex, no parsing)."""
    router = _router("erp.{col:tenant}.{table}.{op}")
    ev = _ev(after={"tenant": "acme"})
    router.subject(ev, "cdc")
    start = time.perf_counter()
    for _ in range(10_000):
        router.subject(ev, "cdc")
    assert (time.perf_counter() - start) / 10_000 < 50e-6
