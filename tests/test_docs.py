"""The repository's documentation is its own: no file points at a document outside it, every
relative link in README.md and docs/*.md reaches a file (and heading) that exists, and the README
stays a guide (under 15,000 bytes, the two quick-start commands as the end-to-end test runs them)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Citations of documents that live outside the repository. Spelled so that this file does not
#: match itself: the notes once kept beside the repository (their four upper-case names), their
#: folder, and any path into the sibling folder other than its reference test fixtures (data the
#: tests read when present, not documents).
OUTSIDE_DOCS = re.compile(r"\b(?:METHOD|DEPLOY|ARCHITECTURE|DVC)[.]md\b|shared[/]docs|[.][.]/shared(?![/]fixtures)")
#: Folders that are never part of the repository's content.
SKIP_DIRS = {".git", ".venv", ".dvc", "__pycache__", "node_modules"}
#: README.md must stay a guide; measured results and design notes belong in docs/.
README_LIMIT = 15_000
QUICK_START = ("    scripts/setup && .venv/bin/dvc repro\n", "    scripts/setup && .venv/bin/python -m pytest -q\n")


def repository_files() -> list[Path]:
    """The files git tracks (plus untracked, not ignored ones), else every file outside SKIP_DIRS."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
        files = [REPO / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in REPO.rglob("*") if not SKIP_DIRS.intersection(p.relative_to(REPO).parts)]
    return [p for p in files if p.is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def test_no_file_cites_a_document_outside_the_repository():
    hits = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_DOCS.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "cite docs/ instead of documents outside the repository:\n" + "\n".join(hits)


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose(markdown: str) -> str:
    """``markdown`` without fenced blocks, indented code blocks and inline code spans."""
    markdown = re.sub(r"^```.*?^```[^\n]*$", "", markdown, flags=re.S | re.M)
    lines = [line for line in markdown.splitlines() if not line.startswith("    ")]
    return re.sub(r"`[^`\n]*`", "", "\n".join(lines))


def anchors(path: Path) -> set[str]:
    """The heading anchors of a markdown file."""
    text = re.sub(r"^```.*?^```[^\n]*$", "", path.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def links(path: Path) -> list[str]:
    """The link targets of ``[text](target)`` in a markdown file's prose."""
    return re.findall(r"\[[^\]\n]*\]\(([^)\s]+)\)", prose(path.read_text()))


DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_reaches_a_file_and_heading_that_exist(doc):
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: {dest.name} has no heading with anchor #{anchor}")
    assert not broken, f"{doc.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_docs_link_checker_sees_links_and_headings(tmp_path):
    """The checker itself: links in prose are found, those in code are not, anchors are GitHub's."""
    page = tmp_path / "page.md"
    page.write_text("# Reference numbers (the paper)\n## dvc.yaml and params.yaml conventions\n"
                    "See [a](a.md#x) and `[b](b.md)`.\n\n    [c](c.md)\n```\n[d](d.md)\n```\n")
    assert links(page) == ["a.md#x"]
    assert anchors(page) == {"reference-numbers-the-paper", "dvcyaml-and-paramsyaml-conventions"}


def test_readme_is_a_guide_under_the_size_limit_with_the_quick_start_commands():
    readme = (REPO / "README.md").read_bytes()
    assert len(readme) < README_LIMIT, (f"README.md is {len(readme)} bytes (limit {README_LIMIT}): move results, "
                                        "design notes or reference material into docs/")
    text = readme.decode()
    for command in QUICK_START:
        assert command in text, f"README.md lost its quick-start command {command.strip()!r}"
    for page in ("docs/method.md", "docs/deployment.md", "docs/architecture.md", "docs/results.md"):
        assert f"]({page}" in text, f"README.md does not link {page}"
