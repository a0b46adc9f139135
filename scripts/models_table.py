"""
Write ``docs/models.md``, the table of text-to-image models generated from the provider's catalog
(``airflow_provider_imagen/_cloudflare/text_to_image_models.json``). Run it after changing the catalog;
``--check`` exits 1 when the file differs from what the catalog generates (``tests/test_catalog.py`` checks
the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "models.md"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) ``docs/models.md``; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether docs/models.md is current")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from airflow_provider_imagen._cloudflare.catalog import models_table

    table = models_table()
    current = DOC.read_text(encoding="utf-8") if DOC.exists() else None
    if args.check:
        if current != table:
            print(f"{DOC.relative_to(ROOT)} is stale: run python scripts/models_table.py", file=sys.stderr)
            return 1
        return 0
    if current != table:
        DOC.write_text(table, encoding="utf-8")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
