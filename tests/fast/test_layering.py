"""The dependency rule of ARCHITECTURE.md, checked on the source tree.

Every import of ours (module level or inside a function) is read with ``ast``;
each stage may import only the stages listed in :data:`ALLOWED`, there is no cycle
between modules, and the client library and the kernel load no database driver, HTTP
server or metrics library when imported (checked in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"bridge": "cdc_bridge", "adapters": "cdc_bridge.adapters", "outbox": "cdc_bridge.outbox"}

#: Stage -> the stages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "kernel": set(),
    "metrics": set(),
    "adapters": {"kernel"},
    "outbox": {"kernel"},
    "relay": {"kernel", "outbox", "metrics"},
    "client": {"kernel"},
    "config": {"kernel", "adapters", "relay"},
    "daemon": {"kernel", "adapters", "outbox", "relay", "metrics", "config", "root"},
    "cli": {"kernel", "adapters", "outbox", "relay", "metrics", "config", "daemon", "client",
            "root"},
    "root": set(),
}
#: Database drivers, the HTTP server, the metrics library (nats-py itself loads aiohttp's
#: client parts for its websocket transport; the server, ``aiohttp.web``, must not load).
HEAVY = ("psycopg", "sqlalchemy", "aiohttp.web", "prometheus_client", "pymysql", "nats")


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return parts[1]


def modules() -> Iterator[tuple[str, Path]]:
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            yield ".".join((package, *rel)), path


def imports(module: str, path: Path) -> set[str]:
    """Modules of ours that ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    known = {m for m, _ in modules()}
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent if is_package else parent[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m.split(".")[0] == "cdc_bridge" and m != module}


GRAPH = {m: imports(m, p) for m, p in modules()}


def test_no_folder_is_imported_by_its_folder_name() -> None:
    """``import bridge``/``adapters``/``outbox`` would load a second copy beside cdc_bridge."""
    bad = []
    for folder in (*FOLDERS, "tests", "bench", "examples", "docs", "deploy"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom)
                         and not node.level else [])
                bad += [f"{path.relative_to(ROOT)}: {n}" for n in names
                        if n.split(".")[0] in FOLDERS]
    assert not bad


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_stage_imports_only_what_the_rule_allows(module: str) -> None:
    mine = stage(module)
    wrong = sorted(m for m in GRAPH[module]
                   if stage(m) != mine and stage(m) not in ALLOWED[mine])
    assert not wrong, f"{module} ({mine}) may not import {wrong}"


def test_no_module_cycles() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for dep in sorted(GRAPH.get(m, ())):
            target = dep if dep in GRAPH else dep.rsplit(".", 1)[0]
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target] if target in trail
                              else [*trail, target])
            elif target in GRAPH and not state.get(target):
                visit(target, [*trail, target])
        state[m] = 2

    for m in sorted(GRAPH):
        if not state.get(m):
            visit(m, [m])
    # a package importing its own submodules (``__init__`` re-exports) is not a cycle
    real = [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]
    assert not real, real


@pytest.mark.parametrize("module", ["cdc_bridge.client.consumer", "cdc_bridge.client.seen",
                                    "cdc_bridge.client",
                                    "cdc_bridge.kernel.events", "cdc_bridge.kernel.batch",
                                    "cdc_bridge.kernel.errors", "cdc_bridge.kernel.wire",
                                    "cdc_bridge.kernel.outbox_table", "cdc_bridge"])
def test_light_modules_load_nothing_heavy(module: str) -> None:
    code = (f"import sys, {module}; "
            "print(' '.join(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules} | "
            "{m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True, cwd="/").stdout.split())
    heavy = set(HEAVY) - ({"nats"} if module.startswith("cdc_bridge.client.consumer") else set())
    assert not loaded & heavy, f"importing {module} loads {sorted(loaded & heavy)}"


def test_client_names_load_lazily_and_resolve() -> None:
    code = ("import sys, cdc_bridge.client as c; assert 'nats' not in sys.modules; "
            "from cdc_bridge.client import Consumer, SqliteSeenStore; "
            "assert 'nats' in sys.modules and 'psycopg' not in sys.modules; "
            "from cdc_bridge.client import write_event; assert 'psycopg' in sys.modules; "
            "print(sorted(c.__all__))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert "'write_event'" in out and "'Consumer'" in out
