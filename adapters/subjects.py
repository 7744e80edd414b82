"""Subject templates in source configs: the field type and the scopes of a source.

A source takes an adapter-level ``subject:`` (and ``allow_shared_subject:``) and, where
it has per-table blocks, the same two keys per table; its config's ``subject_scopes()``
says which template covers which table (:class:`~cdc_bridge.kernel.subjects.SubjectScope`).
The template text is checked when the config is read (:data:`SubjectTemplateText`);
the checks across tables and adapters run once the whole file is read
(:func:`cdc_bridge.kernel.subject_check.check_subjects`). The daemon turns the scopes
into the writer's :class:`~cdc_bridge.kernel.subjects.SubjectRouter`
(:func:`subject_router`). See docs/subjects.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Protocol

from pydantic import AfterValidator

from cdc_bridge.kernel.subjects import SubjectRouter, SubjectScope, parse_template


def _checked(text: str) -> str:
    parse_template(text)
    return text


#: A subject template, relative to the subject prefix: ``erp.{col:tenant}.{table}.{op}``.
SubjectTemplateText = Annotated[str, AfterValidator(_checked)]


@dataclass(frozen=True, slots=True)
class TableSubject:
    """One table of a source as its subject scope sees it (``table`` may be ``*``)."""

    schema: str | None
    table: str
    #: The table's own template, and its ``allow_shared_subject`` (``None``: inherit).
    subject: str | None
    shared: bool | None
    #: The config path of the table's ``subject`` key (``tables[2].subject``).
    where: str


def table_scopes(subject: str | None, shared: bool, tables: Iterable[TableSubject]
                 ) -> list[SubjectScope]:
    """The scopes of a source with per-table blocks: a table's own template, else the
    adapter's, else the default subject."""
    adapter_template = parse_template(subject) if subject is not None else None
    out: list[SubjectScope] = []
    for t in tables:
        own = t.subject is not None
        template = parse_template(t.subject) if t.subject is not None else adapter_template
        out.append(SubjectScope(t.schema, t.table, template, t.where if own else "subject",
                                shared if t.shared is None else t.shared))
    return out


class HasSubjectScopes(Protocol):
    name: str

    def subject_scopes(self) -> list[SubjectScope]: ...


def subject_router(config: HasSubjectScopes) -> SubjectRouter | None:
    """The router of a source's templates; ``None`` when it has none (the fast path)."""
    return SubjectRouter.build(config.name, config.subject_scopes())
