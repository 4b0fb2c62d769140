"""Download (or take a local copy of) ASSISTments 2009 and write the parsed cache.

    python data_scripts/get_assistments.py [--source DIR_OR_CSV] [--data-dir D] [--no-verify]

Without --source, AKT's assist2009_pid files are downloaded from GitHub and checked against
their SHA-256 sums. --source takes a local copy of that folder (sums checked unless --no-verify)
or the original skill_builder_data_corrected.csv. The cache goes to <data-dir>/assist2009/
(data dir: --data-dir, else $DSRSD_DATA, else ~/.cache/dsrsd). A second run with a valid cache
does nothing. Errors print ``error: ...`` and exit with status 2.

This prepares the ``assist2009`` preset (pinned file names and SHA-256 sums). Any other
knowledge-tracing data (an AKT folder of any name, pyKT's sequence files, a skill-builder CSV)
needs no script: ``--dataset kt --data path=DIR_OR_CSV`` parses and caches it on first use.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from dsrsd.cli import OneLineParser, prepare_cache  # noqa: E402
from dsrsd.data.assist import prepare_assist2009  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", help="AKT assist2009_pid folder or skill-builder CSV "
                                     "(default: download AKT's files)")
    ap.add_argument("--data-dir", help="data folder (default: $DSRSD_DATA or ~/.cache/dsrsd)")
    ap.add_argument("--no-verify", action="store_true",
                    help="skip the SHA-256 check of a local AKT folder (only for test fixtures)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
    args = ap.parse_args(argv)
    return prepare_cache(lambda: prepare_assist2009(
        args.source, args.data_dir, verify=not args.no_verify, force=args.force))


if __name__ == "__main__":
    sys.exit(main())
