"""MkDocs hooks: publish the committed study results, and complete the API reference.

- MkDocs only builds files under ``docs_dir``; the results live with their studies. Every Markdown report and figure
  under ``experiments/results`` is added to the build as if it were ``docs/results/<same path>``, so the site always
  shows the committed results as they are, without a copy to keep in sync. A ``README.md`` becomes the index page of
  its folder.
- ``reference/more.md`` is generated: the API reference of every module of the package that no hand-written
  reference page documents (a new module appears there until it is given a place), so the reference always covers
  the whole package and the strict build checks every docstring.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

SUFFIXES = {".md", ".png", ".svg", ".jpg"}
MORE_PAGE = "reference/more.md"


def _add_results(files: Files, config, root: Path) -> None:
    experiments = root / "experiments"
    results = experiments / "results"
    if not results.is_dir():
        return
    for path in sorted(results.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in SUFFIXES:
            continue
        src_uri = path.relative_to(experiments).as_posix()  # results/<study>/...
        if files.get_file_from_path(src_uri) is not None:
            continue  # a hand-written page of the same name wins
        files.append(File(src_uri, str(experiments), config["site_dir"], config["use_directory_urls"]))


def _package_modules(root: Path) -> list[str]:
    """Every module of ``emphatic_rl`` (packages' ``__init__`` only re-export, so they are left to their modules)."""
    modules = []
    for path in sorted((root / "emphatic_rl").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__" or any(part.startswith("_") for part in parts):
            continue
        modules.append(".".join(parts))
    return modules


def _add_more_reference(files: Files, config, root: Path) -> None:
    documented = set()
    for path in (root / config["docs_dir"] / "reference").glob("*.md"):
        documented.update(re.findall(r"^::: ([\w.]+)", path.read_text(encoding="utf-8"), flags=re.M))
    missing = [module for module in _package_modules(root) if module not in documented]
    lines = ["# More modules", ""]
    if missing:
        lines += ["Modules not covered by the pages above (compiled kernels and helpers).", ""]
        lines += [f"::: {module}\n" for module in missing]
    else:
        lines += ["Every module of the package is documented on the pages above."]
    files.append(File.generated(config, MORE_PAGE, content="\n".join(lines) + "\n"))


def on_files(files: Files, config) -> Files:
    root = Path(config["config_file_path"]).resolve().parent
    _add_results(files, config, root)
    _add_more_reference(files, config, root)
    return files
