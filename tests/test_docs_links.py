"""README and docs/ stay a web of pages that resolve: every relative link names a file that exists
and, where it has one, an anchor that is a heading of that file (GitHub's rule for heading ids).
README stays a newcomer's page, and its quick start the two commands CI and people run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_id(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_ids(page: Path) -> set[str]:
    ids, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            ids.add(heading_id(line.lstrip("#")))
    return ids


def test_heading_ids_follow_github():
    assert heading_id("Fine-tuning: WiSE-FT") == "fine-tuning-wise-ft"
    assert heading_id("Captioners -> LLaVA") == "captioners---llava"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file) if file else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in heading_ids(linked):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{page.name}: {broken}"


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.split("```bash", 1)[1].split("```")[0].splitlines()
                if line.strip()]
    assert commands == ["./dev demo", "./dev test"]
