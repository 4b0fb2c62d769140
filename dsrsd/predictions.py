"""Per-run test predictions: the file beside each record that a bootstrap over test units reads.

``<out>/test_predictions.npz`` (compressed) holds, one row per scored test prediction in the
order :func:`dsrsd.train.predict` returns them:

* ``y``: int8 label (multiclass: the class index);
* ``prob``: the probabilities the record's metrics were computed from, at their own precision
  (float32 from a network, float64 from boosting and the COrAL probe), ``[n]`` binary or
  ``[n, C]`` multiclass, so the file gives back the record's ``test.auc`` exactly;
* ``unit``: int32 id of the test unit (the student) the prediction belongs to: OULAD the
  registration's ``id_student``; knowledge tracing the ``user_id`` of the window the step is
  in; a dataset without student identity (synthetic) the sample's row.

On real data the file is a processed copy of the test labels and student ids, so it stays beside
the run on the machine that made it and is never committed (``.gitignore``); the statistics made
from it (``dsrsd.tables.unit_bootstrap``) are results and may be.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from dsrsd.data.batch import MultimodalData, flat_targets
from dsrsd.errors import DsrsdError

PREDICTIONS_FILE = "test_predictions.npz"
# The extras naming a sample's student, per dataset (dsrsd/data/oulad.py, kt_features.py).
UNIT_EXTRAS = ("id_student", "user_id")
KEYS = ("y", "prob", "unit")
_INT32 = np.iinfo(np.int32)


def prediction_units(data: MultimodalData) -> np.ndarray:
    """The test unit of each prediction row of ``data`` (int32; per-step tasks: one row per
    scored step, row-major over windows, as ``flat_targets`` orders them)."""
    key = next((k for k in UNIT_EXTRAS if k in data.extras), None)
    per_sample = data.extras[key].numpy() if key else np.arange(len(data))
    if data.task.kind == "per_step":
        per_sample = np.repeat(per_sample, data.y_mask.sum(1).numpy())
    if len(per_sample) and (per_sample.min() < _INT32.min or per_sample.max() > _INT32.max):
        raise DsrsdError(f"dataset {data.name!r}: extras {key!r} holds ids outside int32")
    return per_sample.astype(np.int32)


def prediction_arrays(data: MultimodalData, y: np.ndarray, prob: np.ndarray
                      ) -> dict[str, np.ndarray]:
    """``y``, ``prob`` and ``unit`` as the file stores them; predictions out of ``data``'s
    order (targets that differ from the data's) are an error, since their units would be wrong."""
    y = np.asarray(y)
    if len(y) != len(prob) or not np.array_equal(y.astype(np.float64),
                                                 flat_targets(data).numpy().astype(np.float64)):
        raise DsrsdError(f"dataset {data.name!r}: the predictions' targets are not the data's "
                         "targets in order (cannot assign test units)")
    if data.task.kind == "multiclass" and data.task.n_classes > 127:
        raise DsrsdError(f"dataset {data.name!r}: {data.task.n_classes} classes do not fit int8")
    return {"y": y.astype(np.int8), "prob": np.asarray(prob), "unit": prediction_units(data)}


def write_predictions(path: str | Path, arrays: dict[str, np.ndarray]) -> dict:
    """Write ``arrays`` (:func:`prediction_arrays`) to ``path`` atomically, compressed; returns
    the record's field naming the file and its row count."""
    from dsrsd.records import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: arrays[k] for k in KEYS})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return {"file": path.name, "rows": int(len(arrays["y"]))}


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions file; a missing, corrupt or inconsistent file is a one-line
    :class:`DsrsdError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DsrsdError(f"no predictions file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in KEYS if k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DsrsdError(f"predictions file {str(path)!r} is corrupt ({type(e).__name__})") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DsrsdError(f"predictions file {str(path)!r} lacks {', '.join(missing)}")
    n = len(arrays["y"])
    if arrays["y"].ndim != 1 or len(arrays["prob"]) != n or arrays["unit"].shape != (n,):
        raise DsrsdError(f"predictions file {str(path)!r}: y, prob and unit differ in length")
    return arrays


__all__ = ["PREDICTIONS_FILE", "prediction_units", "prediction_arrays", "write_predictions",
           "read_predictions"]
