"""dsrsd: DSRSD-Net (a labelled reconstruction, see book/provenance.md), its baselines, the data
sets, the trainer and the book's helpers.

The public names below are imported on first use, so ``import dsrsd`` stays cheap (no torch,
pandas or scikit-learn until a name that needs them is touched) and no submodule imports this
file's names back (no import cycles)::

    import dsrsd
    splits = dsrsd.load_dataset("synthetic", seed=0)
    rec = dsrsd.fit(dsrsd.TrainConfig(method="dsrsd", epochs=5), splits=splits)
"""

from __future__ import annotations

import importlib

from dsrsd.errors import DsrsdError

# public name -> (module, attribute); attribute None means the module itself
_LAZY = {
    "DSRSDNet": ("dsrsd.model", "DSRSDNet"),
    "TrainConfig": ("dsrsd.config", "TrainConfig"),
    "DEFAULT_WEIGHTS": ("dsrsd.config", "DEFAULT_WEIGHTS"),
    "fit": ("dsrsd.train", "fit"),
    "predict": ("dsrsd.train", "predict"),
    "evaluate": ("dsrsd.train", "evaluate"),
    "load_dataset": ("dsrsd.data", "load_dataset"),
    "load_synthetic": ("dsrsd.data.synthetic", "load_synthetic"),
    "DATASETS": ("dsrsd.data", "DATASETS"),
    "METHODS": ("dsrsd.registry", "METHODS"),
    "losses": ("dsrsd.losses", None),
    "stats": ("dsrsd.stats", None),
    "probes": ("dsrsd.probes", None),
    "tables": ("dsrsd.tables", None),
    "book": ("dsrsd.book", None),
}

__all__ = ["DsrsdError", *_LAZY]


def __getattr__(name: str):
    """Import a public name's module on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'dsrsd' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
