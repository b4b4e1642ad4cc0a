"""Rewrite or check ``emphatic_rl/catalog.json`` (what ``emphatic-rl list`` reads) from the live registries::

    python -m emphatic_rl.cli.catalog            # rewrite emphatic_rl/catalog.json
    python -m emphatic_rl.cli.catalog --check    # exit 1 if it differs from the registries
"""

from __future__ import annotations

import argparse
import sys

from emphatic_rl.catalog import CATALOG_PATH, build_catalog, serialise_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emphatic_rl.cli.catalog", description="(re)write catalog.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if catalog.json is stale, write nothing")
    args = parser.parse_args(argv)
    path = CATALOG_PATH
    text = serialise_catalog(build_catalog())
    if args.check:
        stale = not path.is_file() or path.read_text() != text
        print(f"{path}: {'stale: run python -m emphatic_rl.cli.catalog' if stale else 'up to date'}")
        return 1 if stale else 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
