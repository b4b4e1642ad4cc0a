"""MkDocs hook: publish the committed study results (``experiments/results``) under ``results/`` in the site.

MkDocs only builds files under ``docs_dir``; the results live with their studies. This hook adds every Markdown
report and figure under ``experiments/results`` to the build as if it were ``docs/results/<same path>``, so the site
always shows the committed results as they are, without a copy to keep in sync. A ``README.md`` becomes the index
page of its folder.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

SUFFIXES = {".md", ".png", ".svg", ".jpg"}


def on_files(files: Files, config) -> Files:
    experiments = Path(config["config_file_path"]).resolve().parent / "experiments"
    results = experiments / "results"
    if not results.is_dir():
        return files
    for path in sorted(results.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in SUFFIXES:
            continue
        src_uri = path.relative_to(experiments).as_posix()  # results/<study>/...
        if files.get_file_from_path(src_uri) is not None:
            continue  # a hand-written page of the same name wins
        files.append(File(src_uri, str(experiments), config["site_dir"], config["use_directory_urls"]))
    return files
