"""The documentation cannot drift from the code: its YAML examples and its config reference.

1. Every fenced ```` ```yaml ```` block (also an indented one, in a list) of ``README.md``
   and ``docs/**/*.md`` is read:

   - a block whose first line is ``# fragment`` is wrapped into a minimal config and
     validated: a list of adapter blocks (items with ``type``) becomes ``adapters:``, one
     adapter block (a mapping with ``type``) becomes a one-item ``adapters:``, and any
     other mapping is taken as top-level sections (all optional, so it must validate on
     its own). A fragment that fits none of these fails the test: marking a block
     ``# fragment`` never skips it silently;
   - an unmarked block is a full bridge config when its top level is a mapping with
     ``adapters`` or ``nats``; it is validated as it is;
   - any other block (NATS server config, compose files, checkpoint shapes) is not
     bridge config and is left alone.

   Validation is :func:`cdc_bridge.config.parse_config` with every ``${VAR}`` the block uses
   set to a placeholder, so examples may show secrets as environment variables.

2. ``docs/configuration.md`` must equal the output of ``docs/gen_config_reference.py``
   (regenerate it after changing a config model), and must document every key.
"""

from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from cdc_bridge.adapters.registry import REGISTRY
from cdc_bridge.config import parse_config
from cdc_bridge.kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^([ \t]*)```yaml[ \t]*\n(.*?)^\1```[ \t]*$", re.MULTILINE | re.DOTALL)
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
FRAGMENT = "# fragment"
#: Pages that must hold at least one validated example each: every source's guide
#: (``docs/sources/<type>.md``, one per registered type) and these.
SOURCE_PAGES = [*(f"sources/{name}.md" for name in REGISTRY), "outbox.md", "configuration.md"]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def yaml_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of each ```yaml block of ``path``."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, textwrap.dedent(m.group(2)))
            for m in FENCE.finditer(text)]


def as_config(text: str) -> str | None:
    """The config text to validate for one block, or ``None`` if it is not bridge config."""
    first = text.lstrip().splitlines()[0].strip() if text.strip() else ""
    data: Any = yaml.safe_load(text)
    if first == FRAGMENT:
        if isinstance(data, list) and data and all(
                isinstance(item, dict) and "type" in item for item in data):
            return yaml.safe_dump({"adapters": data})
        if isinstance(data, dict) and "type" in data:
            return yaml.safe_dump({"adapters": [data]})
        if isinstance(data, dict):
            return text
        raise AssertionError("a '# fragment' block must be adapter block(s) or top-level "
                             "sections")
    if isinstance(data, dict) and ("adapters" in data or "nats" in data):
        return text
    return None


def _cases() -> list[Any]:
    cases = []
    for path in markdown_files():
        for line, text in yaml_blocks(path):
            rel = path.relative_to(ROOT)
            cases.append(pytest.param(text, id=f"{rel}:{line}"))
    return cases


@pytest.mark.parametrize("text", _cases())
def test_yaml_example_is_a_valid_config(text: str) -> None:
    config = as_config(text)
    if config is None:
        return  # not bridge config (see the module docstring)
    env = {name: f"placeholder-{name.lower()}" for name in VAR.findall(text)}
    try:
        parse_config(config, "example", env=env)
    except ConfigError as e:
        pytest.fail("example does not validate:\n" + "\n".join(e.errors))


def test_each_page_has_validated_examples() -> None:
    for page in SOURCE_PAGES:
        path = DOCS / page
        assert path.exists(), f"docs/{page} is missing"
        checked = [t for _, t in yaml_blocks(path) if as_config(t) is not None]
        assert checked, f"docs/{page} has no YAML example that is checked against the config"


def test_the_checker_rejects_a_broken_example() -> None:
    """The extraction above would catch a doc example with a misspelt key."""
    block = "# fragment\n- name: erp\n  type: sql_poll\n  url: sqlite:///x.db\n" \
            "  pol_interval: 5s\n  tables: [{name: t}]\n"
    config = as_config(block)
    assert config is not None
    with pytest.raises(ConfigError, match=r"adapters\[0\]\.pol_interval: unknown key"):
        parse_config(config, env={})
    assert as_config("port: 4222\njetstream: {store_dir: /data}\n") is None
    with pytest.raises(AssertionError):
        as_config("# fragment\n- 1\n- 2\n")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference",
                                                  DOCS / "gen_config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_guide_belongs_to_a_registered_source() -> None:
    stray = sorted(p.stem for p in (DOCS / "sources").glob("*.md") if p.stem not in REGISTRY)
    assert not stray, f"docs/sources/ has guides for unknown source types: {stray}"


def test_every_source_has_a_summary_for_the_readme() -> None:
    gen = _generator()
    missing = [name for name in REGISTRY if gen.summary(name) == gen.UNDOCUMENTED]
    assert not missing, (f"guides without a '**For:** ...' paragraph under the title: "
                         f"{missing}")


def test_readme_table_of_sources_is_regenerated() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == _generator().readme_with_table(readme), (
        "README's table of sources is stale: run `.venv/bin/python "
        "docs/gen_config_reference.py --write`")


def test_configuration_reference_is_regenerated() -> None:
    expected = _generator().render()
    actual = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/configuration.md is stale: run `.venv/bin/python docs/gen_config_reference.py "
        "--write`")


def test_every_config_key_is_documented() -> None:
    gen = _generator()
    page = gen.render()
    missing = [line for line in page.splitlines() if gen.UNDOCUMENTED in line]
    assert not missing, ("config keys without a meaning: add a `#:` comment above the field "
                         "(or an entry in MEANINGS):\n" + "\n".join(missing))
