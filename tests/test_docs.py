"""The documentation's links: every relative link in README.md and docs/ names a file that
exists and, with a #fragment, a heading in it (a section moved or renamed fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = CODE_BLOCK.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def relative_links(path: Path) -> list[str]:
    text = CODE_BLOCK.sub("", path.read_text())
    return [
        link
        for link in LINK.findall(text)
        if not re.match(r"[a-z]+:", link) and not link.startswith("<")
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_a_file_and_heading_that_exist(doc):
    broken = []
    for link in relative_links(doc):
        target, _, fragment = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{link}: no such heading")
    assert broken == []


def test_the_readme_is_a_front_door():
    """What it is, the two commands, the first curl, where things live, and links: a page a
    newcomer reads in minutes; the manual is in docs/."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 120
    assert "./scripts/dev" in readme and "./scripts/test" in readme
    linked = {Path(link.partition("#")[0]).name for link in relative_links(ROOT / "README.md")}
    assert {p.name for p in DOCS[1:]} <= linked, "every page of docs/ is linked from the README"
