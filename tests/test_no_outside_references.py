"""No tracked text file refers to a file outside the repository.

The package, docs, tests, studies and results must stand on their own: they cite the papers (authors, year, section)
or the project's own docs pages, never design notes or specifications that live next to a checkout. Three checks over
every tracked text file:

- no reference to the old design notes and specifications by name, and no path that leaves the checkout (the
  shared folder beside a checkout, absolute paths of a working machine);
- every ``docs/...md`` page and every ``tests/...py`` file a text cites exists;
- every relative Markdown link stays inside the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".ini", ".sh", ".in"}
TEXT_NAMES = {"run", "LICENSE"}  # extension-less text files (e.g. .ci/run)
MAX_BYTES = 2_000_000

# Written so that this file does not match itself.
OUTSIDE = re.compile(
    r"(?<![\w/-])(?:ace|dyna|anchors|DESIGN)\.md\b"  # the specification and design notes by name
    r"|\.\./shared\b"  # the shared folder next to a checkout
    r"|(?<![\w.])/work/[\w.-]+"  # absolute paths of a working machine
    r"|\bspecs/[\w-]+\.md\b"
)
CITED_DOC = re.compile(r"(?<![\w/.-])docs/[\w/-]+\.md\b")
CITED_TEST = re.compile(r"(?<![\w/.-])tests/[\w/]+\.py\b")
MD_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def tracked_text_files() -> list[Path]:
    """The repository's text files that git tracks or would track (``git ls-files --cached --others
    --exclude-standard``), or every file outside hidden and build folders when
    the tree is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
            timeout=60,
        ).stdout
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", ".ci-venv", "site", "runs", "__pycache__", "build", "dist"}
        paths = [p for p in ROOT.rglob("*") if not any(part in skip for part in p.relative_to(ROOT).parts)]
    files = []
    for path in paths:
        if not path.is_file() or path.stat().st_size > MAX_BYTES:
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            files.append(path)
    return files


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    result = {}
    for path in tracked_text_files():
        try:
            result[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    assert len(result) > 50, f"found only {len(result)} text files under {ROOT}"
    return result


def _hits(texts: dict[str, str], pattern: re.Pattern[str], keep=lambda path, match: True) -> list[str]:
    hits = []
    for path, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            for match in pattern.finditer(line):
                if keep(path, match):
                    hits.append(f"{path}:{number}: {line.strip()[:160]}")
    return hits


def test_no_file_refers_to_design_notes_or_paths_outside_the_repository(texts):
    hits = _hits(texts, OUTSIDE)
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_cited_docs_pages_and_test_files_exist(texts):
    def missing(path, match):
        return not (ROOT / match.group(0)).is_file()

    hits = _hits(texts, CITED_DOC, missing) + _hits(texts, CITED_TEST, missing)
    assert not hits, "citations of docs pages or test files that do not exist:\n" + "\n".join(hits)


def test_relative_markdown_links_stay_inside_the_repository(texts):
    def leaves(path, match):
        target = match.group(1)
        if re.match(r"^[a-z][\w+.-]*:", target) or target.startswith("/"):
            return target.startswith("/")  # URLs are fine; absolute file paths are not
        resolved = (ROOT / path).parent.joinpath(target).resolve()
        return not resolved.is_relative_to(ROOT)

    markdown = {path: text for path, text in texts.items() if path.endswith(".md")}
    hits = _hits(markdown, MD_LINK, leaves)
    assert not hits, "Markdown links that leave the repository:\n" + "\n".join(hits)


@pytest.mark.parametrize(
    "text",
    [
        "see ace" + ".md §2.1",
        "(specs/dyna" + ".md section 3)",
        "see `.." + "/shared/notes`",
        "the DESIGN" + ".md notes",
        "spec /" + "work/shared/specs/x",
        "anchors" + ".md",
    ],
)
def test_the_pattern_catches_outside_references(text):
    assert OUTSIDE.search(text)


@pytest.mark.parametrize("text", ["deep_ace.py", "docs/algorithms/actor-critic.md", "../README.md"])
def test_the_pattern_leaves_inside_references_alone(text):
    assert not OUTSIDE.search(text)
