"""Re-execute the book's notebooks in place, so their stored outputs match the current code.

The stored outputs are what nbval compares against and what the fast book build (tests/test_book.py)
renders, so refresh them after changing ``dsrsd`` or a notebook, then review the diff.

    python data_scripts/refresh_outputs.py                  # every notebooks/*.ipynb, in name order
    python data_scripts/refresh_outputs.py --only 03_alignment [--only 04_decorrelation]
    python data_scripts/refresh_outputs.py --list           # show what would run

Each notebook runs with the ``python3`` kernel (the interpreter running this script), from the
``notebooks/`` folder as in the book build and in nbval, with no per-cell timing metadata and with
progress bars off (``TQDM_DISABLE=1``), so a re-run of unchanged code gives the same outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

# Set before any kernel starts: kernels inherit this process's environment.
KERNEL_ENV = {
    "TQDM_DISABLE": "1",        # no progress bars (they print rates and absolute paths)
    "PYTHONHASHSEED": "0",      # stable str hashing inside the kernel
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences a debugger warning on frozen modules
}


def find_notebooks(only: list[str] | None) -> list[Path]:
    """The notebooks to run: all of ``notebooks/*.ipynb`` or those named by ``--only``."""
    every = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith("."))
    if not only:
        return every
    chosen = []
    for name in only:
        stem = Path(name).name.removesuffix(".ipynb")
        matches = [p for p in every if p.stem == stem] or [p for p in every if p.stem.startswith(stem)]
        if len(matches) != 1:
            names = ", ".join(p.stem for p in every) or "(none)"
            raise SystemExit(f"error: --only {name!r} matches {len(matches)} notebooks; have: {names}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def refresh(path: Path, timeout: int) -> float:
    """Execute one notebook in place; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # Keep the kernelspec portable: always the generic python3 kernel.
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=timeout,
        record_timing=False,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    # nbclient leaves widget state and papermill leaves its own metadata; neither belongs in git.
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="notebook to run, by file name with or without .ipynb (repeatable)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    parser.add_argument("--list", action="store_true", help="list the notebooks and exit")
    args = parser.parse_args(argv)

    paths = find_notebooks(args.only)
    if not paths:
        print(f"error: no notebooks under {NOTEBOOKS}", file=sys.stderr)
        return 1
    if args.list:
        print("\n".join(str(p.relative_to(REPO)) for p in paths))
        return 0

    os.environ.update(KERNEL_ENV)
    from nbclient.exceptions import CellExecutionError

    total = 0.0
    failed = []
    for path in paths:
        rel = path.relative_to(REPO)
        print(f"{rel} ...", end=" ", flush=True)
        try:
            seconds = refresh(path, args.timeout)
        except CellExecutionError as exc:
            print("FAILED")
            print(str(exc).strip()[-3000:], file=sys.stderr)
            failed.append(rel)
            continue
        total += seconds
        print(f"{seconds:6.1f} s", flush=True)
    print(f"total {total:.1f} s for {len(paths) - len(failed)} notebook(s)")
    if failed:
        print("failed (left unchanged): " + ", ".join(map(str, failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
