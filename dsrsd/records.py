"""Provenance for every result file, and atomic writes so nothing is left half-written."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch


def git_commit(repo: Path | None = None) -> str:
    """HEAD's commit, suffixed ``+dirty`` when tracked files differ; ``unknown`` outside git."""
    cwd = str(repo or Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()}"


def provenance(device: torch.device) -> dict:
    """The fields every record carries besides its metrics and config."""
    return {"git_commit": git_commit(), "torch": torch.__version__, "device": device_name(device),
            "python": platform.python_version(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` durably (fsync) and readably (0644) through the package's one atomic
    write, :func:`dsrsd.data.paths.atomic_file` (temp file in the same folder, then rename)."""
    from dsrsd.data.paths import atomic_file

    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` through a temp file + rename: a kill mid-write leaves the old file intact.

    Serialised in memory first, so a full disk is an ``OSError`` naming the file (torch's own
    writer reports it as an opaque RuntimeError).
    """
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
