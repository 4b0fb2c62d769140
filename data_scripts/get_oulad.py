"""Download (or take a local copy of) OULAD, validate it and write the prepared cache.

    python data_scripts/get_oulad.py [--source ZIP_OR_DIR] [--data-dir D] [--no-count-check]

Without --source the official zip is downloaded from the Open University. The cache goes to
<data-dir>/oulad/ (data dir: --data-dir, else $DSRSD_DATA, else ~/.cache/dsrsd). A second run
with a valid cache does nothing. Errors print ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from dsrsd.cli import OneLineParser, prepare_cache  # noqa: E402
from dsrsd.data.oulad import OULAD_ROWS, prepare_oulad  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="official zip or folder of the 7 CSVs (default: download)")
    ap.add_argument("--data-dir", help="data folder (default: $DSRSD_DATA or ~/.cache/dsrsd)")
    ap.add_argument("--no-count-check", action="store_true",
                    help="skip the official row counts (only for small test fixtures)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
    args = ap.parse_args(argv)
    return prepare_cache(lambda: prepare_oulad(
        args.source, args.data_dir, expected_rows=None if args.no_count_check else OULAD_ROWS,
        force=args.force))


if __name__ == "__main__":
    sys.exit(main())
