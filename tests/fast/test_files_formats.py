"""Unit tests of the files adapter's pure parts: formats, record reading, snapshot merge.

Real bytes in, rows or per-row errors out; hypothesis fuzzes every parser and the
record reader with arbitrary bytes (a row or a clear RowError, never a crash).
"""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_bridge.adapters.files.config import (
    CsvOptions,
    FilesConfig,
    FixedField,
    FixedWidthOptions,
    JsonlOptions,
)
from cdc_bridge.adapters.files.formats import CsvFormat, FixedWidthFormat, JsonlFormat, RowError
from cdc_bridge.adapters.files.formats.types import convert
from cdc_bridge.adapters.files.modes.snapshot_store import SnapshotStore, merge_page
from cdc_bridge.adapters.files.reader import RecordReader
from tests.fast import examples


def csv_fmt(**kw: object) -> CsvFormat:
    types = kw.pop("types", None)
    fmt = CsvFormat(CsvOptions(**kw), types)  # type: ignore[arg-type]
    return fmt


def read_all(data: bytes, joiner: object = None, max_bytes: int = 1 << 20,
             final: bool = True) -> list[tuple[int, int, bytes, str | None]]:
    reader = RecordReader(io.BytesIO(data), 0, 1, joiner, max_bytes)  # type: ignore[arg-type]
    return [(r.offset, r.line, r.raw, r.error) for r in reader.read(10_000, final=final)]


# --- csv ------------------------------------------------------------------------------


def test_csv_header_types_and_quotes() -> None:
    fmt = csv_fmt(types={"amount": "decimal", "qty": "int"})
    fmt.read_header(b"id,name,amount,qty")
    assert fmt.parse(b'1,"Smith, J",12.50,3') == {
        "id": "1", "name": "Smith, J", "amount": Decimal("12.50"), "qty": 3}
    assert fmt.parse(b'2,"say ""hi""",,') == {
        "id": "2", "name": 'say "hi"', "amount": None, "qty": None}


def test_csv_errors_are_per_row() -> None:
    fmt = csv_fmt(types={"qty": "int"})
    fmt.read_header(b"id,qty")
    with pytest.raises(RowError, match="wrong field count: 3 fields, 2 expected"):
        fmt.parse(b"1,2,3")
    with pytest.raises(RowError, match="field 'qty': not a number"):
        fmt.parse(b"1,abc")
    with pytest.raises(RowError, match="undecodable bytes"):
        fmt.parse(b"1,\xff\xfe")
    with pytest.raises(RowError, match="malformed CSV"):
        fmt.parse(b'1,"unterminated')
    assert fmt.parse(b"5,7") == {"id": "5", "qty": 7}  # the parser recovered


def test_csv_dialect_cp1252_and_explicit_columns() -> None:
    fmt = csv_fmt(delimiter=";", quotechar="'", encoding="cp1252", header=False,
                  columns=["id", "city"])
    assert fmt.parse("7;'Köln; am Rhein €'".encode("cp1252")) == {
        "id": "7", "city": "Köln; am Rhein €"}


def test_quote_joiner_spans_lines() -> None:
    fmt = csv_fmt()
    data = b'id,note\n1,"two\nlines"\n2,plain\n3,"a ""q""\r\nb"\n'
    recs = read_all(data, fmt.joiner())
    assert [(o, ln) for o, ln, _, _ in recs] == [(0, 1), (8, 2), (22, 4), (30, 5)]
    fmt.read_header(recs[0][2])
    assert fmt.parse(recs[1][2]) == {"id": "1", "note": "two\nlines"}
    assert fmt.parse(recs[3][2]) == {"id": "3", "note": 'a "q"\r\nb'}


# --- reader -----------------------------------------------------------------------------


def test_reader_leaves_incomplete_line_unless_final() -> None:
    data = b"a\nb\nc"
    assert [r[2] for r in read_all(data, final=False)] == [b"a", b"b"]
    assert [r[2] for r in read_all(data, final=True)] == [b"a", b"b", b"c"]


def test_reader_bounds_oversized_records() -> None:
    data = b"ok\n" + b"x" * 500 + b"\nafter\n"
    recs = read_all(data, max_bytes=100)
    assert recs[0] == (0, 1, b"ok", None)
    assert recs[1][3] == "record longer than 100 bytes" and len(recs[1][2]) == 100
    assert recs[2] == (504, 3, b"after", None)


def test_reader_resumes_at_offset() -> None:
    data = b"l1\nl2\nl3\n"
    reader = RecordReader(io.BytesIO(data), 3, 2, None, 1024)
    assert [(r.offset, r.line, r.raw) for r in reader.read(5, final=True)] == [
        (3, 2, b"l2"), (6, 3, b"l3")]
    assert (reader.offset, reader.line) == (9, 4)


# --- jsonl and fixed width ----------------------------------------------------------------


def test_jsonl() -> None:
    fmt = JsonlFormat(JsonlOptions())
    assert fmt.parse(b'{"id": 1, "v": [1.5]}') == {"id": 1, "v": [1.5]}
    with pytest.raises(RowError, match="malformed JSON"):
        fmt.parse(b'{"id": ')
    with pytest.raises(RowError, match="must hold an object"):
        fmt.parse(b"[1]")
    latin = JsonlFormat(JsonlOptions(encoding="latin-1"))
    assert latin.parse('{"n": "Grüße"}'.encode("latin-1")) == {"n": "Grüße"}


LAYOUT = FixedWidthOptions(fields=[
    FixedField(name="id", start=1, length=5, type="int"),
    FixedField(name="name", start=6, length=10),
    FixedField(name="amount", start=16, length=8, type="decimal", implied_decimals=2),
    FixedField(name="day", start=24, length=8, type="date", date_format="%Y%m%d"),
])


def test_fixed_width_layout() -> None:
    fmt = FixedWidthFormat(LAYOUT)
    assert fmt.parse(b"00042Smith     0001234-20240229") == {
        "id": 42, "name": "Smith", "amount": Decimal("-12.34"), "day": dt.date(2024, 2, 29)}
    with pytest.raises(RowError, match="short record"):
        fmt.parse(b"00042Smith")
    with pytest.raises(RowError, match="field 'amount': not a number"):
        fmt.parse(b"00042Smith     00X1234 20240229")
    with pytest.raises(RowError, match="field 'day': not a date"):
        fmt.parse(b"00042Smith     0001234 20241399")


def test_convert_edge_cases() -> None:
    assert convert("12-", "int", "x") == -12
    assert convert("  ", "int", "x") is None
    assert convert("yes", "bool", "x") is True
    with pytest.raises(RowError):
        convert("1.5", "int", "x")
    with pytest.raises(RowError):
        convert("NaN", "decimal", "x")
    # floats JSON cannot hold travel as strings, as every source writes them, not null
    assert convert("nan", "float", "x") == "NaN"
    assert convert("-inf", "float", "x") == "-Infinity"
    assert convert("1e400", "float", "x") == "Infinity"
    assert convert("-2.5", "float", "x") == -2.5


# --- fuzz: arbitrary bytes give rows or RowError, never anything else --------------------


def _fuzz_parse(fmt: object, data: bytes) -> None:
    try:
        row = fmt.parse(data)  # type: ignore[attr-defined]
    except RowError as e:
        assert e.reason
    else:
        assert isinstance(row, dict)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=200), st.sampled_from([",", ";", "\t", "|"]))
def test_fuzz_csv(data: bytes, delimiter: str) -> None:
    fmt = csv_fmt(delimiter=delimiter, header=False, columns=["a", "b"],
                  types={"b": "decimal"})
    _fuzz_parse(fmt, data)
    _fuzz_parse(fmt, b"1" + delimiter.encode() + b"2")  # state never leaks between rows


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_jsonl_and_fixed_width(data: bytes) -> None:
    _fuzz_parse(JsonlFormat(JsonlOptions()), data)
    _fuzz_parse(FixedWidthFormat(LAYOUT), data)
    _fuzz_parse(FixedWidthFormat(LAYOUT.model_copy(update={"encoding": "cp1252"})), data)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=8, max_value=64))
def test_fuzz_reader_covers_every_byte(data: bytes, max_bytes: int) -> None:
    reader = RecordReader(io.BytesIO(data), 0, 1, csv_fmt().joiner(), max_bytes)
    recs = reader.read(10_000, final=True)
    assert reader.offset == len(data)  # every byte consumed, none twice
    for rec, nxt in zip(recs, [*recs[1:], None], strict=False):
        end = nxt.offset if nxt else len(data)
        assert rec.offset < end
        assert len(rec.raw) <= max_bytes
        if rec.error is None:
            assert data[rec.offset:end].rstrip(b"\r\n") == rec.raw.rstrip(b"\r\n")
        else:
            assert data[rec.offset:end].startswith(rec.raw)


# --- snapshot merge ------------------------------------------------------------------


def test_merge_page_ops() -> None:
    new = [("1", b'{"v":1}'), ("2", b'{"v":20}'), ("4", b'{"v":4}')]
    old = [("1", b'{"v":1}'), ("2", b'{"v":2}'), ("3", b'{"v":3}')]
    changes, last, finished = merge_page(new, old, False, False)
    assert [(c.op, c.key) for c in changes] == [("u", "2"), ("d", "3"), ("c", "4")]
    assert changes[0].before == b'{"v":2}' and finished and last == "4"


@settings(max_examples=examples(100), deadline=None)
@given(st.dictionaries(st.integers(0, 60), st.integers(0, 3), max_size=40),
       st.dictionaries(st.integers(0, 60), st.integers(0, 3), max_size=40),
       st.integers(1, 7))
def test_store_diff_pages_equal_full_diff(tmp_path_factory: pytest.TempPathFactory,
                                          old: dict[int, int], new: dict[int, int],
                                          n: int) -> None:
    path: Path = tmp_path_factory.mktemp("snap") / "s.db"
    store = SnapshotStore(path)
    for ident, rows in (("a", old), ("b", new)):
        store.begin_load(ident)
        store.load([(f"{k:03d}", str(v).encode(), 0, 0, b"") for k, v in rows.items()])
        store.finish_load()
        if ident == "a":
            store.swap("a")
    got: list[tuple[str, str]] = []
    after = None
    while True:
        changes, after, finished = store.diff(after, n)
        got.extend((c.op, c.key) for c in changes)
        if finished:
            break
    expected = sorted(
        [("c", f"{k:03d}") for k in new if k not in old]
        + [("d", f"{k:03d}") for k in old if k not in new]
        + [("u", f"{k:03d}") for k in new if k in old and new[k] != old[k]],
        key=lambda t: t[1])
    assert got == expected
    store.close()


# --- config ---------------------------------------------------------------------------


def test_config_shape_from_the_brief_and_strictness() -> None:
    from cdc_bridge.config import parse_config
    from cdc_bridge.kernel.errors import ConfigError

    cfg = parse_config("adapters:\n  - {name: exports, type: files, path: /data/drop,"
                       " pattern: '*.csv', format: csv, mode: drop}\n")
    assert isinstance(cfg.adapters[0], FilesConfig)
    adapter: FilesConfig = cfg.adapter_configs[0]  # type: ignore[assignment]
    assert adapter.mode == "drop" and adapter.table_for("x.csv") == "exports"
    bad = ("adapters:\n"
           "  - {name: a, type: files, path: /d, pattern: '*.csv', csv: {delimter: ';'}}\n"
           "  - {name: b, type: files, path: /d/f.log, pattern: '*', mode: tail}\n"
           "  - {name: c, type: files, path: /d, pattern: '*', mode: snapshot}\n"
           "  - {name: d, type: files, path: /d, pattern: '*', format: fixed_width}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = "\n".join(info.value.errors)
    assert "adapters[0].csv.delimter: unknown key" in text
    assert "mode tail follows the one file" in text
    assert "mode snapshot needs 'key'" in text
    assert "format fixed_width needs" in text
