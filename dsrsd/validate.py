"""Input checks at the edge, in one place: the CLI, the sweep and the chapters all pass through here.

Nothing here lists parameter names by hand. The allowed keys and their types come from

* :class:`~dsrsd.config.TrainConfig` (its fields, type hints and ``metadata`` ranges),
* the dataset loaders' signatures (:data:`DATA_SIGNATURES`: e.g. ``load_oulad``'s keywords,
  ``SyntheticConfig``'s fields),
* the model classes' constructors (:func:`dsrsd.registry.method_param_hints`).

Every problem is a one-line :class:`~dsrsd.errors.DsrsdError` naming the key and the value.
Numbers must be finite; integers are not floats (``n=20.5`` is an error, not 20); ``True`` is
not a number. Values are never converted, so a valid config hashes exactly as before.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsrsd.errors import DsrsdError

INT_LIMIT = 2**63 - 1  # anything torch or numpy could take as an integer
_ANY = object()  # hint for an unannotated parameter without a usable default


# ------------------------------------------------------------------------------ single values


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is _ANY or hint is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None) or hint is None:
        return "null"
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint in (str, Path):
        return "a string"
    if hint is dict or origin is dict:
        return "an object {key: value}"
    if origin in (tuple, list) or hint in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return "a list" + (f" of ({', '.join(_describe(a) for a in inner)})" if inner else "")
    return getattr(hint, "__name__", str(hint))


def _is(value: Any, hint: Any) -> bool:
    """Does ``value`` have type ``hint``? (JSON-shaped: lists stand for tuples, strings for paths)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is _ANY or hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                and abs(int(value)) <= INT_LIMIT)
    if hint is float:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(float(value)))
    if hint in (str, Path):
        return isinstance(value, (str, Path))
    if hint is dict or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False
        return len(args) < 2 or all(_is(v, args[1]) for v in value.values())
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis or origin is list:
            return all(_is(v, args[0]) for v in value)
        return len(value) == len(args) and all(_is(v, a) for v, a in zip(value, args, strict=True))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _finite_everywhere(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite_everywhere(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite_everywhere(v) for v in value)
    return True


def _show(value: Any) -> str:
    s = repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


def check_value(where: str, value: Any, hint: Any, meta: dict | None = None) -> None:
    """``value`` must have type ``hint``, be finite, and respect ``meta`` (``min``, ``max``,
    ``min_open``/``max_open`` for open ends, ``choices``)."""
    if not _is(value, hint) or not _finite_everywhere(value):
        raise DsrsdError(f"{where} must be {_describe(hint)}, got {_show(value)}")
    meta = meta or {}
    if "choices" in meta and value not in meta["choices"]:
        raise DsrsdError(f"{where} must be one of {', '.join(map(str, meta['choices']))}, "
                         f"got {_show(value)}")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        lo_open, hi_open = meta.get("min_open", False), meta.get("max_open", False)
        bad = ((lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise DsrsdError(f"{where} must be in {rng}, got {_show(value)}")


def check_keys(where: str, params: Any, hints: dict[str, Any], reserved: dict[str, str] | None = None,
               metas: dict[str, dict] | None = None) -> None:
    """``params`` is a dict whose keys are in ``hints`` and whose values have those types."""
    if not isinstance(params, dict):
        raise DsrsdError(f"{where} must be an object {{key: value}}, got {_show(params)}")
    for key, reason in (reserved or {}).items():
        if key in params:
            raise DsrsdError(f"{where}: {key!r} cannot be set here ({reason})")
    unknown = sorted(k for k in params if k not in hints)
    if unknown:
        raise DsrsdError(f"{where}: unknown key(s) {unknown} (allowed: "
                         f"{', '.join(sorted(hints)) or 'none'})")
    for key, value in params.items():
        check_value(f"{where} {key}", value, hints[key], (metas or {}).get(key))


# ------------------------------------------------------------------------------- signatures


def signature_hints(fn: Callable, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword parameters of ``fn`` (a function or a class) -> type hint.

    Unresolvable or missing annotations fall back to the default's type (``None`` -> any).
    ``*args``/``**kwargs`` and the names in ``drop`` are left out.
    """
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        resolved = typing.get_type_hints(target)
    except Exception:  # a name only imported for type checking: fall back per parameter
        resolved = {}
    out = {}
    for name, p in inspect.signature(target).parameters.items():
        if name in ("self", *drop) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = resolved.get(name, _ANY)
        if hint is _ANY and p.default is not inspect.Parameter.empty and p.default is not None:
            hint = type(p.default)
        out[name] = hint
    return out


def dataclass_hints(cls: type) -> tuple[dict[str, Any], dict[str, dict]]:
    """A dataclass's fields -> (type hints, ``metadata`` ranges)."""
    from dataclasses import fields
    hints = typing.get_type_hints(cls)
    return ({f.name: hints[f.name] for f in fields(cls)},
            {f.name: dict(f.metadata) for f in fields(cls)})


# ---------------------------------------------------------------------------------- datasets


def _synthetic_hints() -> dict[str, Any]:
    from dsrsd.data.synthetic import SyntheticConfig, load_synthetic
    return {**signature_hints(load_synthetic), **dataclass_hints(SyntheticConfig)[0]}


def _oulad_hints() -> dict[str, Any]:
    from dsrsd.data.oulad import load_oulad
    return signature_hints(load_oulad, drop=("seed",))


def _assist_hints() -> dict[str, Any]:
    from dsrsd.data.assist import load_assist2009
    return signature_hints(load_assist2009)


def _kt_hints() -> dict[str, Any]:
    from dsrsd.data.kt import load_kt
    return signature_hints(load_kt)


# dataset -> (its keyword hints, the loader's own range check, keys set elsewhere)
DATA_SIGNATURES: dict[str, Callable[[], dict[str, Any]]] = {
    "synthetic": _synthetic_hints, "oulad": _oulad_hints, "assist2009": _assist_hints,
    "kt": _kt_hints}
_RESERVED = {"oulad": {"seed": "OULAD's validation draw follows the run's --seed"}}
# ``max_train``: every dataset; a seeded subsample of that many training samples (dsrsd.data)
COMMON_DATA = {"max_train": int}
COMMON_META = {"max_train": {"min": 1}}


def check_data_params(dataset: str, params: Any) -> None:
    """Keys, types and ranges of a dataset's parameters (nothing is loaded)."""
    from dsrsd.data import DATASETS, check_dataset_params
    if dataset not in DATASETS:
        raise DsrsdError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")
    hints = {**DATA_SIGNATURES[dataset](), **COMMON_DATA}
    check_keys(f"dataset {dataset}: parameter", params, hints, _RESERVED.get(dataset), COMMON_META)
    check_dataset_params(dataset, {k: v for k, v in params.items() if k not in COMMON_DATA})


# ----------------------------------------------------------------------------------- methods


def check_method_params(method: str, params: Any) -> None:
    """Keys and types of a method's parameters, from its model's constructor."""
    from dsrsd.registry import METHODS, method_param_hints
    if method not in METHODS:
        raise DsrsdError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    hints, metas = method_param_hints(method)
    unknown = sorted(str(k) for k in params) if not isinstance(params, dict) else sorted(
        str(k) for k in params if k not in hints)
    if isinstance(params, dict) and unknown:
        raise DsrsdError(f"method {method!r} does not take parameter(s) {unknown} "
                         f"(allowed: {', '.join(sorted(hints)) or 'none'})")
    check_keys(f"method {method}: parameter", params, hints, metas=metas)


# ---------------------------------------------------------------------------------- configs


def check_weights(weights: Any) -> None:
    """Loss weights: known terms only (:data:`~dsrsd.config.DEFAULT_WEIGHTS`), finite, >= 0."""
    from dsrsd.config import DEFAULT_WEIGHTS
    if not isinstance(weights, dict):
        raise DsrsdError(f"loss weights must be an object {{term: weight}}, got {_show(weights)}")
    unknown = sorted(str(k) for k in weights if k not in DEFAULT_WEIGHTS)
    if unknown:
        raise DsrsdError(f"unknown loss term(s) {unknown} (terms: {', '.join(DEFAULT_WEIGHTS)})")
    for name, w in weights.items():
        if not _is(w, float) or w < 0:
            raise DsrsdError(f"loss weight {name}={_show(w)} must be a non-negative finite number")


def check_config(cfg: Any) -> None:
    """Every field of a :class:`~dsrsd.config.TrainConfig`: type, range, known keys."""
    check_weights(cfg.weights)
    check_data_params(cfg.dataset, cfg.data_params)
    check_method_params(cfg.method, cfg.method_params)
    hints, metas = dataclass_hints(type(cfg))
    for name, hint in hints.items():
        check_value(name, getattr(cfg, name), hint, metas[name])


# ------------------------------------------------------------------------------- identifiers

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,63}$")
MAX_RUN_ID = 160


def check_name(where: str, name: Any) -> str:
    """A label that becomes part of a folder name: letters, digits and ``._+=-``, at most 64
    characters, not starting with a dot or a dash."""
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise DsrsdError(f"{where} {_show(name)} is not a safe name (1-64 of letters, digits and "
                         "._+=- , starting with a letter or digit)")
    return name


def run_dir(out: str | Path, run_id: str) -> Path:
    """``out/run_id``, refused unless ``run_id`` is a safe name that stays inside ``out``."""
    if (not isinstance(run_id, str) or len(run_id) > MAX_RUN_ID
            or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$", run_id)):
        raise DsrsdError(f"run id {_show(run_id)} is not a safe folder name")
    base = Path(out).resolve()
    d = (base / run_id).resolve()
    if d.parent != base:
        raise DsrsdError(f"run id {_show(run_id)} leaves the output folder {str(out)!r}")
    return Path(out) / run_id
