"""The docs hold together: relative links and their #anchors resolve, every `docs/design.md §N` a
comment cites exists, and the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "cluster" / "README.md",
    ROOT / "benchmarks" / "README.md",
]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
CITATION = re.compile(r"docs/design\.md §(\d+)")


def prose(text: str) -> str:
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def project_files() -> list[Path]:
    """The repository's own text files (no virtual environment, runs or results)."""
    files = [ROOT / name for name in ("Makefile", "pyproject.toml", "README.md")]
    for folder in ("tlsearch", "tests", "benchmarks", "cluster", "constraints", "docs", "search_spaces"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and "results" not in p.parts]
    return [p for p in files if p.suffix not in {".parquet", ".png", ".pyc"}]


def test_design_citations_name_existing_sections() -> None:
    sections = {int(n) for n in re.findall(r"^## §(\d+) ", (ROOT / "docs" / "design.md").read_text(), re.M)}
    cited: dict[int, list[str]] = {}
    for path in project_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number in CITATION.findall(text):
            cited.setdefault(int(number), []).append(str(path.relative_to(ROOT)))
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert cited and not missing, f"cited sections missing from docs/design.md: {missing}"


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
