"""ASSISTments 2009-2010 skill builder (knowledge tracing), protocol B: the named preset.

* :func:`prepare_assist2009` takes AKT's preprocessed ``assist2009_pid`` folder (downloaded, or
  a local copy; SHA-256 checked) or the original ``skill_builder_data_corrected.csv`` and writes a
  parsed cache under ``<data_dir>/assist2009/``.
* :func:`load_assist2009` builds the per-step :class:`~dsrsd.data.batch.Splits` of one fold.

The work is done by the knowledge-tracing stages, shared with any KT data set
(``--dataset kt``, :mod:`dsrsd.data.kt`): parsing (:mod:`dsrsd.data.kt_parse`), interactions and
tensors (:mod:`dsrsd.data.kt_features`: merging of multi-skill runs, windows, item statistics).
This module keeps the pinned file names and SHA-256 sums, the ``assist2009`` cache and the
names older code imports from here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dsrsd.data.batch import Splits
from dsrsd.data.kt import VALID_CHOICES, choose_validation, load_parts, save_parts
from dsrsd.data.kt_features import (  # noqa: F401  (re-exported for older imports)
    HISTORY_DIM,
    ITEM_STATS,
    PRIOR_WEIGHT,
    _item_stats,
    _problem_stats,
    _windows,
    build,
    inner_split,
    kt_features_flat,
    merge_runs,
    skill_embeddings,
    to_splits,
)
from dsrsd.data.kt_parse import (  # noqa: F401  (re-exported for older imports)
    CSV_COLUMNS,
    PARTS,
    _ints,
    parse_akt,
)
from dsrsd.data.kt_parse import read_skill_builder as _read_skill_builder  # noqa: F401
from dsrsd.data.kt_parse import read_skill_json as _read_skill_json
from dsrsd.data.kt_parse import sha256 as _sha256
from dsrsd.data.kt_parse import skill_builder_parts as _from_skill_builder
from dsrsd.data.paths import atomic_dir, cached_torch, data_dir, download, read_json
from dsrsd.errors import DsrsdError

AKT_URL = "https://raw.githubusercontent.com/arghosh/AKT/master/data/assist2009_pid/{}"
FORMAT = 1
TENSOR_FORMAT = 2  # 2: history in the item-aware kt layout
FOLD_FILES = [f"assist2009_pid_{p}{k}.csv" for k in range(1, 6) for p in PARTS]
# SHA-256 of AKT commit 01b7e8d7 (data/assist2009_pid); valid_k is identical to test_{k+1}
SHA256 = {
    "assist2009_pid_test1.csv": "7a1cb2bc8045dbe1016253fdd1dc831b26580638e15a7b7b99c5d7c73d3c3915",
    "assist2009_pid_test2.csv": "547c17ad179e850edc7a8a8a1e74a2e371e5eaeafcb2c375b7ae53248e733db0",
    "assist2009_pid_test3.csv": "deb07f638f84e391c170ca3bdc87eb07001c8034e6f5b87817876378b20ff3ee",
    "assist2009_pid_test4.csv": "b6a8edbe565cfae154ccae93584d69d7bd99a8341ac3e481ea1c569b9239ecc3",
    "assist2009_pid_test5.csv": "be0b93bd7f94c4d489f2950eb818d2a6d96ebd5ddb2342ee152695d504c40fa5",
    "assist2009_pid_train1.csv": "2b373459f4a55e305b7cc5aea3106398a1383c3356de5eaf8b249cd010ae01b7",
    "assist2009_pid_train2.csv": "b007e4046a823ce0e885e23b2b4c9d9755829c9982805ce22fcfe18d9d6820eb",
    "assist2009_pid_train3.csv": "57b66247d1bd8cec7577c100e484dde1c01739a1804b9d31eb0f9af7d213f643",
    "assist2009_pid_train4.csv": "249f8a087b9cba051ad477be1b935960b463476db192e5fcb6642169f78d2336",
    "assist2009_pid_train5.csv": "7220348e97eaf2efcd122cc53efbc55cf5676ca6144652135ee3c501aa86ae88",
    "assist2009_pid_valid1.csv": "547c17ad179e850edc7a8a8a1e74a2e371e5eaeafcb2c375b7ae53248e733db0",
    "assist2009_pid_valid2.csv": "deb07f638f84e391c170ca3bdc87eb07001c8034e6f5b87817876378b20ff3ee",
    "assist2009_pid_valid3.csv": "b6a8edbe565cfae154ccae93584d69d7bd99a8341ac3e481ea1c569b9239ecc3",
    "assist2009_pid_valid4.csv": "be0b93bd7f94c4d489f2950eb818d2a6d96ebd5ddb2342ee152695d504c40fa5",
    "assist2009_pid_valid5.csv": "7a1cb2bc8045dbe1016253fdd1dc831b26580638e15a7b7b99c5d7c73d3c3915",
    "problems.json": "e79a0a91549238058f2e6f3ddf393dd08476285275f26f35291d15f5aa3563e2",
    "skill.json": "f3a3e5e9d719c264b28a8bcedf5a7debfbf51f3c6c78db206175f0c443de6ccd",
    "user.json": "fbe90e77b63882f125f6ce442e600e111dfbaa7e49b8d6213c96c52d2169f168",
}
REQUIRED = [*FOLD_FILES, "skill.json"]  # problems.json and user.json are not used


def _from_akt(folder: Path, verify: bool) -> tuple[dict, list[str]]:
    for f in REQUIRED:
        if not (folder / f).is_file():
            raise DsrsdError(f"{folder}: missing file {f}")
    if verify:
        for f, want in SHA256.items():
            if (folder / f).is_file() and _sha256(folder / f) != want:
                raise DsrsdError(f"{folder / f}: SHA-256 mismatch (not AKT's file; "
                                 "use --no-verify only for test fixtures)")
    names = _read_skill_json(folder / "skill.json")
    parts = {f.removeprefix("assist2009_pid_").removesuffix(".csv"): parse_akt(folder / f, len(names))
             for f in FOLD_FILES}
    return parts, names


# ------------------------------------------------------------------------------------- cache


def _root(data_dir_arg: str | Path | None) -> Path:
    return data_dir(data_dir_arg) / "assist2009"


def assist_cache_ok(data_dir_arg: str | Path | None = None) -> bool:
    """True if a complete prepared ASSISTments cache exists."""
    root = _root(data_dir_arg)
    m = read_json(root / "manifest.json")
    return bool(m) and m.get("format") == FORMAT and all(
        (root / f).is_file() for f in ("parts.npz", "skills.json"))


def prepare_assist2009(source: str | Path | None = None, data_dir: str | Path | None = None,
                       verify: bool = True, force: bool = False,
                       log: Callable[[str], None] = print) -> Path:
    """Parse ASSISTments 2009 and write the cache ``<data_dir>/assist2009/``; return that folder.

    ``source``: AKT's ``assist2009_pid`` folder (SHA-256 checked unless ``verify=False``, for test
    fixtures), the original skill-builder CSV (5 seeded student-level folds are made), or None to
    download AKT's files. A valid cache is left as is unless ``force``.
    """
    root = _root(data_dir)
    if not force and assist_cache_ok(data_dir):
        log(f"ASSISTments: prepared cache at {root} is valid, nothing to do (use --force to redo)")
        return root
    if source is None:
        source = root.parent / "downloads" / "assist2009_pid"
        for f, want in SHA256.items():
            dest = source / f
            if not dest.is_file() or _sha256(dest) != want:
                log(f"ASSISTments: downloading {f}")
                download(AKT_URL.format(f), dest, f)
                if _sha256(dest) != want:
                    dest.unlink()
                    raise DsrsdError(f"{AKT_URL.format(f)}: SHA-256 mismatch after download")
        verify = True
    source = Path(source).expanduser()
    if not source.exists():
        raise DsrsdError(f"ASSISTments source {source} does not exist")
    log(f"ASSISTments: reading {source}")
    if source.is_dir():
        parts, names = _from_akt(source, verify)
        kind = "akt"
    else:
        parts, names = _from_skill_builder(source)
        kind = "skill_builder"
    for p, a in parts.items():
        if len(a["user"]) == 0:
            raise DsrsdError(f"ASSISTments: part {p!r} has no students")
    with atomic_dir(root) as tmp:
        save_parts(tmp, parts, names)
        manifest = {"format": FORMAT, "kind": kind, "source": str(source), "verified": verify,
                    "rows": {p: int(len(a["resp"])) for p, a in parts.items()},
                    "students": {p: int(len(a["user"])) for p, a in parts.items()},
                    "prepared": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"ASSISTments: prepared {root} ({kind}, {len(names)} skills)")
    return root




def _load_parts(root: Path, fold: int) -> tuple[dict, list[str]]:
    """One fold's parts from the cache; never unpickles (``allow_pickle=False``)."""
    return load_parts(root, fold, "ASSISTments",
                      "rebuild it with python data_scripts/get_assistments.py --force")


def _build(parts: dict, names: list[str], fold: int, max_len: int, text_dim: int,
           merge: bool = True) -> dict:
    return build(parts, names, fold, max_len, text_dim, merge)


def _to_splits(built: dict, text_dim: int) -> Splits:
    return to_splits(built, text_dim)


# -------------------------------------------------------------------------------------- load


def check_params(fold: int, max_len: int, text_dim: int, valid: str = "given",
                 inner_frac: float = 0.2) -> None:
    """Range checks of :func:`load_assist2009`'s parameters."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= 5:
        raise DsrsdError(f"fold must be an integer in 1..5, got {fold!r}")
    if (isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer))
            or not 2 <= max_len <= 100_000):
        raise DsrsdError(f"max_len must be an integer in 2..100000, got {max_len!r}")
    if (isinstance(text_dim, bool) or not isinstance(text_dim, (int, np.integer))
            or not 1 <= text_dim <= 4096):
        raise DsrsdError(f"text_dim must be an integer in 1..4096, got {text_dim!r}")
    if valid not in VALID_CHOICES:
        raise DsrsdError(f"valid must be one of {', '.join(VALID_CHOICES)}, got {valid!r}")
    if isinstance(inner_frac, bool) or not isinstance(inner_frac, (int, float)) \
            or not 0 < inner_frac < 1:
        raise DsrsdError(f"inner_frac must be a number in (0, 1), got {inner_frac!r}")


def load_assist2009(data_dir: str | Path | None = None, fold: int = 1, max_len: int = 200,
                    source: str | Path | None = None, text_dim: int = 32, valid: str = "given",
                    inner_frac: float = 0.2, inner_seed: int = 0) -> Splits:
    """ASSISTments 2009 fold ``fold`` (1..5: train_k / valid_k / test_k) as per-step Splits.

    Each sample is a window of ``max_len`` steps of one student (``T = max_len``):

    * ``history`` (sequence, causal, layout ``kt``, long ``[N, T, K + 2]``, vocab
      ``2 * n_skills + 1``, items ``n_problems + 1``): at step t the skills of interaction t
      (0 = pad), its problem id + 1 and its response r_t, which is the target of step t (models
      read it for later steps only); ``pad["history"]`` is True on real steps;
    * ``content`` (tabular, float ``[N, T, text_dim]``): the target item's skill names embedded
      offline (TF-IDF char n-grams + SVD), averaged over its skills;
    * ``item_stats`` (tabular, float ``[N, T, 3]``): the target problem's smoothed correct rate,
      log1p attempt count and skill count, from the training fold only.

    ``y`` float ``[N, T]``; ``y_mask`` marks scored steps. ``extras``: user_id, window, target
    problem ``[N, T]`` and target skills ``[N, T, K]``.

    ``valid="given"`` (default) validates on AKT's ``valid_k`` (the students of ``test_{k+1}``:
    per-fold early stopping only; ``info`` is unchanged from older records, which all used it).
    ``valid="inner"`` validates on a seeded (``inner_seed``) student-level split of
    ``inner_frac`` of ``train_k`` and records it in ``info["validation"]``: the split for every
    choice made across folds (see book/protocols.md).
    """
    check_params(fold, max_len, text_dim, valid, inner_frac)
    root = _root(data_dir)
    if source is not None:
        prepare_assist2009(source, data_dir, log=lambda s: None)
    elif not assist_cache_ok(data_dir):
        raise DsrsdError(f"no prepared ASSISTments 2009 under {root}: run "
                         "python data_scripts/get_assistments.py [--source DIR] [--data-dir DIR]")
    key = f"v{TENSOR_FORMAT}_fold{fold}_T{max_len}_d{text_dim}"
    if valid != "given":
        key += f"_inner{inner_frac!r}_s{inner_seed}"

    def make() -> dict:
        parts, names = _load_parts(root, int(fold))
        if valid == "given":  # exactly the tensors and info of every committed record
            return build(parts, names, int(fold), int(max_len), int(text_dim))
        parts, validation = choose_validation(parts, valid, inner_frac, inner_seed)
        return build(parts, names, int(fold), int(max_len), int(text_dim),
                     extra_info={"validation": validation})

    return to_splits(cached_torch(root / "tensors" / f"{key}.pt", make), int(text_dim))
