"""Row images checked against their registry version's JSON Schema (optional).

:class:`RowValidators` compiles one validator per version (by its ``dataschema`` URI;
versions never change once written) with the ``jsonschema`` library, imported only when
the first validator is made: install the ``schemas`` extra (``pip install
'cdc-bridge[schemas]'``). :func:`require_jsonschema` fails early with that advice.

The schema is the registry entry's ``json_schema`` (JSON Schema 2020-12 of a row image:
every column present, of its JSON type or null when nullable, no other column).
``format`` (``date-time``, ``byte``...) is an annotation here, not asserted. A column
holding the unchanged-TOAST placeholder (a PostgreSQL update that did not touch a large
value, :data:`~cdc_bridge.kernel.events.UNCHANGED_TOAST_PLACEHOLDER`) is not checked:
its value is unknown, not wrong.

Pure apart from the import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cdc_bridge.kernel.events import UNCHANGED_TOAST_PLACEHOLDER


class SchemaInvalid(Exception):
    """An event whose row image does not match its version: it never will."""


def require_jsonschema() -> Any:
    """The ``jsonschema`` module; ``ImportError`` with the install advice if absent."""
    try:
        import jsonschema
    except ImportError as e:
        raise ImportError("validating events needs the jsonschema library: "
                          "pip install 'cdc-bridge[schemas]'") from e
    return jsonschema


class RowValidators:
    """Compiled validators by version URI, and the first problem of a row."""

    def __init__(self) -> None:
        self._compiled: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._compiled)

    def validator(self, uri: str, json_schema: Mapping[str, Any]) -> Any:
        """The validator of version ``uri`` (compiled at its first use)."""
        compiled = self._compiled.get(uri)
        if compiled is None:
            jsonschema = require_jsonschema()
            cls = jsonschema.validators.validator_for(json_schema,
                                                      jsonschema.Draft202012Validator)
            cls.check_schema(json_schema)
            compiled = self._compiled[uri] = cls(json_schema)
        return compiled

    def problem(self, uri: str, json_schema: Mapping[str, Any], row: Any) -> str | None:
        """Why ``row`` does not match version ``uri``; ``None`` if it does."""
        validator = self.validator(uri, json_schema)
        if isinstance(row, dict) and UNCHANGED_TOAST_PLACEHOLDER in row.values():
            unknown = sorted(k for k, v in row.items() if v == UNCHANGED_TOAST_PLACEHOLDER)
            props = json_schema.get("properties") or {}
            validator = self.validator(f"{uri}#unchanged:{','.join(unknown)}", {
                **json_schema,
                "properties": {k: ({} if k in unknown else v) for k, v in props.items()}})
        errors = list(validator.iter_errors(row))
        if not errors:
            return None
        from jsonschema.exceptions import best_match

        best = best_match(errors)
        where = "/".join(str(p) for p in best.absolute_path) or "(row)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{where}: {best.message}{more}"

    def check(self, uri: str, json_schema: Mapping[str, Any], row: Any, what: str) -> None:
        """:class:`SchemaInvalid` if ``row`` (``what``: which image) does not match."""
        found = self.problem(uri, json_schema, row)
        if found is not None:
            raise SchemaInvalid(f"{what} does not match {uri}: {found}")
