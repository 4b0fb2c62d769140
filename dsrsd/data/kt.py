"""Knowledge tracing, stage 3: any KT data set, prepared once (cache) and loaded as Splits.

``--dataset kt --data path=DIR_OR_CSV`` loads, detected from the path:

* an AKT folder of 4-line files, of any name and file prefix (folds as given, or built from the
  test files alone); ``skill.json`` optional (skills are otherwise named ``skill <id>``);
* pyKT's ``train_valid_sequences.csv`` + ``test_sequences.csv`` (a folder, or the train file);
* the ASSISTments skill-builder CSV.

The parsed rows are cached under ``<data_dir>/kt/<name>-<digest>/``, keyed by the SHA-256 of every
source file, so editing a file rebuilds and two data sets never share a cache. Every load puts the
data set's name, source path, layout and file hashes in ``info["source"]``, and which split
validates in ``info["validation"]``; the trainer stores ``info`` in every record. Features follow
:mod:`dsrsd.data.kt_features`, exactly as for ``assist2009`` (its named, SHA-256-verified preset).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dsrsd.data.batch import Splits
from dsrsd.data.kt_features import build, inner_split, to_splits
from dsrsd.data.kt_parse import PARTS, PYKT_TRAIN, ROW_KEYS, read_any, sha256, source_files
from dsrsd.data.paths import atomic_dir, cached_torch, data_dir, read_json
from dsrsd.errors import DsrsdError

CACHE_FORMAT = 1
TENSOR_FORMAT = 2  # 2: history in the item-aware kt layout
VALID_CHOICES = ("given", "inner")
VALIDATION_NOTE = {
    "given": "the source's own validation part of this fold (AKT folders: valid_k, the same "
             "students as test_{k+1}; use it for per-fold choices only, reported per fold)",
    "inner": "a seeded student-level split of this fold's training students; the source's "
             "validation part is not used (for any choice made across folds)",
}


# ------------------------------------------------------------------------------------- cache


def save_parts(tmp: Path, parts: dict, names: list[str]) -> None:
    np.savez(tmp / "parts.npz", **{f"{p}/{k}": v for p, a in parts.items() for k, v in a.items()})
    (tmp / "skills.json").write_text(json.dumps(names))


def load_parts(root: Path, fold: int, label: str, rebuild: str) -> tuple[dict, list[str]]:
    """One fold's parts from a cache; never unpickles (``allow_pickle=False``)."""
    try:
        with np.load(root / "parts.npz", allow_pickle=False) as z:
            parts = {p: {k: z[f"{p}{fold}/{k}"] for k in ROW_KEYS} for p in PARTS}
        if not all(isinstance(a, np.ndarray) and a.dtype.kind in "biu"
                   for part in parts.values() for a in part.values()):
            raise ValueError("parts.npz holds something other than integer arrays")
        names = json.loads((root / "skills.json").read_text())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("skills.json")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise DsrsdError(f"the prepared {label} cache under {root} is unreadable "
                         f"({type(e).__name__}): {rebuild}") from None
    return parts, names


def choose_validation(parts: dict, valid: str, inner_frac: float, inner_seed: int
                      ) -> tuple[dict, dict]:
    """``parts`` with the validation part ``valid`` selects, and its ``info["validation"]``."""
    if valid == "given":
        return parts, {"split": "given", "note": VALIDATION_NOTE["given"]}
    tr, va = inner_split(parts["train"], inner_frac, inner_seed)
    return ({"train": tr, "valid": va, "test": parts["test"]},
            {"split": "inner", "frac": inner_frac, "seed": inner_seed,
             "students": {"train": int(len(tr["user"])), "valid": int(len(va["user"]))},
             "note": VALIDATION_NOTE["inner"]})


def _slug(path: Path) -> str:
    if path.is_file() and path.name == PYKT_TRAIN:  # the train file names its folder's data set
        path = path.parent
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", stem).lstrip("._-")[:48] or "kt"


def prepare_kt(path: str | Path, data_dir_arg: str | Path | None = None) -> tuple[Path, dict]:
    """Parse ``path`` once into ``<data_dir>/kt/<slug>-<digest>/``; return it and its manifest."""
    src = Path(path).expanduser().resolve()
    layout, files = source_files(src)
    hashes = {}
    for f in files:
        try:
            hashes[f.name] = sha256(f)
        except OSError as e:
            raise DsrsdError(f"{f}: unreadable ({e.strerror or e})") from None
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, layout, sorted(hashes.items())])
                            .encode()).hexdigest()
    root = data_dir(data_dir_arg) / "kt" / f"{_slug(src)}-{digest[:16]}"
    m = read_json(root / "manifest.json")
    if (m and m.get("format") == CACHE_FORMAT and m.get("digest") == digest
            and (root / "parts.npz").is_file() and (root / "skills.json").is_file()):
        return root, m
    parts, names, how = read_any(src)
    for p, a in parts.items():
        if len(a["user"]) == 0:
            raise DsrsdError(f"{src}: part {p!r} has no students")
    from dsrsd.data.assist import SHA256 as PRESET  # the assist2009 preset's pinned files
    preset = ("assist2009" if layout == "akt" and all(PRESET.get(f) == h for f, h in hashes.items())
              and set(PRESET) - {"problems.json", "user.json"} <= set(hashes) else None)
    n_folds = sum(1 for p in parts if p.startswith("test"))
    with atomic_dir(root) as tmp:
        save_parts(tmp, parts, names)
        m = {"format": CACHE_FORMAT, "digest": digest, "layout": how["layout"],
             "source": str(src), "files": hashes, "n_folds": n_folds, "matches_preset": preset,
             "rows": {p: int(len(a["resp"])) for p, a in parts.items()},
             "students": {p: int(len(a["user"])) for p, a in parts.items()},
             "prepared": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "manifest.json").write_text(json.dumps(m, indent=1))
    return root, m


# -------------------------------------------------------------------------------------- load


def check_kt_params(path: str | None, fold: int, max_len: int, text_dim: int, valid: str,
                    inner_frac: float, name: str | None) -> None:
    """Range checks of :func:`load_kt`'s parameters (the fold's upper bound is checked on load)."""
    from dsrsd.data.assist import check_params
    if path is None or not str(path).strip():
        raise DsrsdError("dataset kt needs path=DIR_OR_CSV (an AKT folder, a pyKT folder or a "
                         "skill-builder CSV)")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 1:
        raise DsrsdError(f"fold must be an integer >= 1, got {fold!r}")
    check_params(1, max_len, text_dim, valid, inner_frac)
    if name is not None:
        from dsrsd.validate import check_name
        check_name("dataset name", name)


def load_kt(path: str | None = None, data_dir: str | None = None, fold: int = 1,
            max_len: int = 200, text_dim: int = 32, valid: str = "given", inner_frac: float = 0.2,
            inner_seed: int = 0, name: str | None = None) -> Splits:
    """Fold ``fold`` of any KT data set at ``path`` as per-step Splits (same tensors as
    :func:`dsrsd.data.assist.load_assist2009`).

    ``valid``: ``given`` validates (early stopping) on the source's validation part of the fold;
    ``inner`` on a seeded (``inner_seed``) student-level split of ``inner_frac`` of the fold's
    training students, for any choice made across folds. ``name``: the data set's name in
    records (default: the folder or file name).
    """
    check_kt_params(path, fold, max_len, text_dim, valid, inner_frac, name)
    root, m = prepare_kt(path, data_dir)
    if fold > m["n_folds"]:
        raise DsrsdError(f"fold must be in 1..{m['n_folds']} for {m['source']}, got {fold}")
    label = name or root.name.rsplit("-", 1)[0]
    extra = {"source": {"path": m["source"], "layout": m["layout"], "files": m["files"],
                        "matches_preset": m["matches_preset"]}}
    vkey = "" if valid == "given" else f"_inner{inner_frac!r}_s{inner_seed}"
    key = f"v{TENSOR_FORMAT}_fold{fold}_T{max_len}_d{text_dim}{vkey}_{label}"

    def make() -> dict:
        parts, names = load_parts(root, int(fold), label, "delete it to rebuild")
        parts, validation = choose_validation(parts, valid, inner_frac, inner_seed)
        return build(parts, names, int(fold), int(max_len), int(text_dim), dataset=label,
                     extra_info={**extra, "validation": validation})

    return to_splits(cached_torch(root / "tensors" / f"{key}.pt", make), int(text_dim), label)
