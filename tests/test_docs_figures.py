"""Figures in the documents: each measured figure lives on one page (others link to it), pages
say no "issue N" or "this change" a reader cannot follow, and the suite's time is given once."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A measured quantity: throughput, memory, a short duration.
FIGURE = re.compile(r"\b(\d+(?:[.,]\d+)?) ?(tok/s|req/s|MB|ms)\b")


def test_each_measured_figure_is_on_one_page():
    pages: dict[str, set[str]] = defaultdict(set)
    for document in DOCUMENTS:
        for match in FIGURE.finditer(document.read_text(encoding="utf-8")):
            pages[f"{match[1]} {match[2]}"].add(document.name)
    assert len(pages) > 30, "the pattern finds the documents' figures"
    twice = {figure: sorted(names) for figure, names in pages.items() if len(names) > 1}
    assert twice == {}, f"the same figure on two pages (keep it on one, link from the other): {twice}"


def test_no_page_speaks_of_issues_or_changes_a_reader_cannot_see():
    found = []
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bissue \d|\bissue's\b|\bthis change\b", line, re.IGNORECASE):
                found.append(f"{document.name}:{number}: {line.strip()}")
    assert found == []


def test_the_suites_time_is_given_once():
    times = [
        (document.name, line)
        for document in DOCUMENTS
        for line in document.read_text(encoding="utf-8").splitlines()
        if re.search(r"(suite|make test|default run)\b.*\b\d+(\.\d+)? (minutes|min)\b", line)
        or re.search(r"\bthe suite \d+ minutes", line)
    ]
    assert [name for name, _ in times] == ["testing.md"], times
