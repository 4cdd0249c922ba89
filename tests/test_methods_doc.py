"""docs/methods.md cannot drift from the code: every registered method has a section, the generated parameter
table is the one the registry gives (every parameter with its default), and the needs table lists every method
with the registry's sources. (tests/test_no_inject_time.py holds the needs table's inject_time column to what each
method does.)"""

import re
from pathlib import Path

import pytest

from llmrca.methods import entries, method_class, names
from llmrca.methods.doc import BEGIN, END, generated_block, parameter_cells, parameters_markdown, updated

DOC = Path(__file__).resolve().parent.parent / "docs" / "methods.md"
TEXT = DOC.read_text(encoding="utf-8")
INJECT = ("needed", "estimated", "not used")


def needs_table() -> dict[str, dict[str, str]]:
    """The rows of the page's "What each method needs" table: method → sources, inject_time, structure."""
    section = TEXT.split("## What each method needs", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("method", "---"):
            rows[cells[0]] = {"sources": cells[1], "inject_time": cells[2], "structure": cells[3]}
    return rows


@pytest.mark.parametrize("name", names())
def test_every_method_has_a_section(name):
    assert re.search(rf"^## {re.escape(name)}\s*$", TEXT, re.MULTILINE), f"docs/methods.md has no '## {name}' section"


def test_the_parameter_table_is_the_generated_one():
    assert TEXT.count(BEGIN) == 1 and TEXT.count(END) == 1
    assert generated_block(TEXT) == parameters_markdown(), "run: python -m llmrca.methods.doc"
    assert updated(TEXT) == TEXT


@pytest.mark.parametrize("name", names())
def test_every_parameter_is_listed_with_its_default(name):
    row = next(ln for ln in generated_block(TEXT).splitlines() if ln.startswith(f"| {name} |"))
    defaults = method_class(name).default_params()
    for key, value in defaults.items():
        assert f"`{key}` {value!r}" in row, (name, key)
    assert len(parameter_cells(name)) == len(defaults)


def test_the_needs_table_lists_every_method_with_its_sources():
    table = needs_table()
    assert set(table) == set(names()), set(table) ^ set(names())
    for e in entries():
        assert table[e.name]["sources"] == ", ".join(sorted(e.needs)), e.name
        assert table[e.name]["inject_time"] in INJECT, e.name


def test_updating_a_page_without_the_block_appends_it(tmp_path):
    page = "# methods\n\ntext\n"
    new = updated(page)
    assert new.startswith(page) and generated_block(new) == parameters_markdown()
    assert updated(new) == new
