"""The package layout: only ``emphatic_rl.cli`` parses arguments, import errors surface, cited modules exist.

- No library module (anything outside ``emphatic_rl/cli/``) imports ``argparse``.
- An ``ImportError`` raised while a command's module (or an agent module) is imported reaches the caller as that
  error, naming the module, instead of becoming "invalid choice" or "unknown agent".
- Every dotted ``emphatic_rl.x.y`` name and every ``emphatic_rl/x/y.py`` path that a tracked text file cites exists
  (a module, or a name defined in one), so moved modules leave no stale reference behind.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "emphatic_rl"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".json", ".txt"}
DOTTED = re.compile(r"(?<![\w.])emphatic_rl(?:\.\w+)+")
PATH = re.compile(r"(?<![\w/.-])emphatic_rl/[\w/]+\.(?:py|json)\b")


def library_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "cli" not in p.relative_to(PACKAGE).parts[:1]]


def test_only_the_cli_imports_argparse():
    offenders = []
    for path in library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "argparse" for name in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"library modules that parse arguments (move the parser to emphatic_rl/cli/): {offenders}"


def _forget(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize(
    ("argv", "cli_module", "library_module"),
    [
        (["report", "somewhere"], "emphatic_rl.cli.report", "emphatic_rl.studies.report"),
        (["sweep", "somewhere"], "emphatic_rl.cli.sweep", "emphatic_rl.studies.sweep"),
        (["gradients", "--env", "baird"], "emphatic_rl.cli.gradients", "emphatic_rl.gradients"),
        (["dyna", "dyna-gridworld", "--out", "unused"], "emphatic_rl.cli.studies", "emphatic_rl.studies.dyna"),
    ],
)
def test_an_import_error_in_a_command_module_is_not_swallowed(monkeypatch, argv, cli_module, library_module):
    import importlib

    from emphatic_rl.cli import main

    _forget(monkeypatch, cli_module)
    monkeypatch.setitem(sys.modules, library_module, None)  # importing it now raises ModuleNotFoundError
    parent, _, child = library_module.rpartition(".")
    monkeypatch.delattr(importlib.import_module(parent), child, raising=False)  # `from parent import child` too
    with pytest.raises(ImportError, match=re.escape(library_module)):
        main(argv)


def test_an_import_error_in_an_agent_module_is_not_swallowed(monkeypatch):
    from emphatic_rl.agents import load_agents

    monkeypatch.setitem(sys.modules, "emphatic_rl.agents.deep.dqn", None)
    with pytest.raises(ImportError, match=re.escape("emphatic_rl.agents.deep.dqn")):
        load_agents()


def test_a_broken_library_import_is_a_traceback_from_the_installed_command(tmp_path):
    """In a fresh process: a module that fails to import stops the command with its traceback (exit 1), not with
    argparse's "invalid choice" (exit 2)."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['emphatic_rl.studies.report'] = None\n")
    result = subprocess.run(
        [sys.executable, "-m", "emphatic_rl.cli", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and "emphatic_rl.studies.report" in result.stderr
    assert "invalid choice" not in result.stderr


def tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    files = [ROOT / line for line in out.stdout.splitlines() if line]
    return [p for p in files if p.suffix in TEXT_SUFFIXES and p.is_file() and not p.is_symlink()]


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _resolves(dotted: str) -> bool:
    """``dotted`` is a module of the package, or its longest module prefix defines (or imports) the next name."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = _module_file(parts[:cut])
        if module is None:
            continue
        if cut == len(parts):
            return True
        name = re.escape(parts[cut])
        defined = (
            rf"^\s*(?:async\s+def|def|class)\s+{name}\b"  # def / class
            rf"|^\s*{name}\s*[:=]"  # an assignment
            rf"|^(?:from|import)\s[^\n]*(?<![.\w]){name}\b(?!\.)"  # imported on one line
            rf"|^\s+{name},?\s*$"  # a name of a parenthesised import or of __all__
            rf"|[\"']{name}[\"']"  # a name the module serves lazily (``__getattr__``, ``__all__``)
        )
        return name.startswith("__") or re.search(defined, module.read_text(), re.MULTILINE) is not None
    return False


#: files that cite old module paths on purpose (the old -> new table of the layout page)
OLD_PATHS_ON_PURPOSE = {"docs/architecture.md", "tests/test_layout.py"}
#: dotted names that are not modules: the metadata key of per-member dataclass fields
NOT_MODULES = {"emphatic_rl.per_member"}


def test_every_cited_module_and_file_exists():
    stale = set()
    for path in tracked_text_files():
        if str(path.relative_to(ROOT)) in OLD_PATHS_ON_PURPOSE:
            continue
        text = path.read_text(errors="replace")
        for match in DOTTED.finditer(text):
            name = match.group(0).rstrip(".")
            if name not in NOT_MODULES and not _resolves(name):
                stale.add(f"{path.relative_to(ROOT)}: {name}")
        for match in PATH.finditer(text):
            if not (ROOT / match.group(0)).exists():
                stale.add(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not stale, "references to modules or files that do not exist:\n" + "\n".join(sorted(stale))


#: repository paths a page may cite: a top folder, then a file or folder name (templated names such as
#: ``results/minatar_<device>.md`` are not paths and are left alone)
REPO_PATH = re.compile(r"(?<![\w/.<{-])((?:benchmarks|experiments|tests|examples|docs|\.ci)/[\w./-]*[\w])(?![\w<{*-])")


def test_every_path_the_readme_and_docs_cite_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    missing = set()
    for page in pages:
        for match in REPO_PATH.finditer(page.read_text()):
            if not (ROOT / match.group(1)).exists():
                missing.add(f"{page.relative_to(ROOT)}: {match.group(1)}")
    assert not missing, "paths cited by the README or the docs that do not exist:\n" + "\n".join(sorted(missing))
