"""Where datasets live on disk, and atomic writes so a cache is never half-written.

Every cache write goes to a temporary name in the destination folder and is moved into place with
``os.replace`` only once complete; a crash or a :class:`~dsrsd.errors.DsrsdError` midway leaves the
previous state (or nothing), never a truncated file a later run would trust.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dsrsd.errors import DsrsdError

ENV_VAR = "DSRSD_DATA"


def data_dir(arg: str | Path | None = None) -> Path:
    """The data folder: ``arg`` if given, else ``$DSRSD_DATA``, else ``~/.cache/dsrsd``."""
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dsrsd"


@contextmanager
def atomic_file(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success move it onto ``dest``, else delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dest``; on success it replaces ``dest`` whole.

    ``os.replace`` cannot overwrite a non-empty folder, so an old ``dest`` is first renamed
    aside and deleted after the swap: readers see the old folder, then the new one, never a mix.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: str | Path) -> Any | None:
    """Read a JSON file, or None if it is missing or unreadable (a cache is then rebuilt)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves a truncated cache."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def cached_torch(path: str | Path, build: Callable[[], Any]) -> Any:
    """Load ``path`` if it holds a readable tensor cache, else ``build()`` and save it atomically.

    The cache must contain only tensors and plain Python containers (``weights_only`` loading).
    """
    path = Path(path)
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # an unreadable cache is rebuilt, not fatal
            pass
    obj = build()
    torch_save_atomic(obj, path)
    return obj


def download(url: str, dest: str | Path, desc: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, with a tqdm progress bar.

    Raises :class:`DsrsdError` naming the URL on any network or disk failure.
    """
    dest = Path(dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_file(dest) as tmp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                            desc=desc or dest.name) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DsrsdError(f"download of {url} failed: {e}") from None
    return dest
