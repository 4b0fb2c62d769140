"""Run configuration: one dataclass, validated, hashable into records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from dsrsd.errors import DsrsdError

# Default loss weights, all ours [R]. book/papers.md section 1.4 proposes lambda_a = 0.1, lambda_d =
# 0.04, lambda_o = 0.1, lambda_r = 0; with those the streams did not separate on the planted-factor
# data (chapter 2 shows the probe numbers). These were chosen on that synthetic data only: full
# # alignment weight with the cosine regression, orthogonality 10 (the Frobenius form averages
# k^2 tiny entries, so it needs a large weight), and reconstruction 1 so the private stream
# keeps what the task alone would not ask for. Chapter 9 sweeps them. Every record's hash and every
# experiment's expansion builds on these values, so they stay, as the synthetic data's defaults; on
# real data ``train`` starts from what the validation searches chose (dsrsd.sweep.SEARCHED).
DEFAULT_WEIGHTS = {"align_con": 1.0, "align_reg": 1.0, "decor": 0.04, "orth": 10.0, "recon": 1.0,
                   # COrAL and MISA return one pre-weighted term each (their inner weights are
                   # method_params), so their outer weight is 1.
                   "coral": 1.0, "misa": 1.0,
                   # DSRSD-Net's per-modality task heads: also pre-weighted inside the model
                   # (method_params modality_task_weight, 0 = not built), so the outer weight is 1.
                   "modality_task": 1.0,
                   # AKT's L2 on the problem difficulties: pre-weighted by method_params mu_l2.
                   "rasch_l2": 1.0}
# Regularisers warmed up linearly over the first epochs, so the task shapes the space first.
WARMUP_TERMS = ("decor", "orth")
# ``TrainConfig.warmup_terms`` -> the terms it ramps: "reg" (the book's runs), "all" (issue 12:
# every auxiliary term; any weighted term is a key of DEFAULT_WEIGHTS, validate.check_weights).
WARMUP_CHOICES = {"reg": WARMUP_TERMS, "all": tuple(DEFAULT_WEIGHTS)}
# Fields added after records existed: left out of the hash at their default, so every earlier
# config keeps its hash (sweeps find their finished runs, --resume accepts old checkpoints).
HASH_OMITTED_AT_DEFAULT = ("warmup_terms", "select_after_warmup", "length_buckets")
# Loss weights added after records existed: left out of the hash while they hold these values.
WEIGHTS_OMITTED_AT_DEFAULT = {"modality_task": 1.0, "rasch_l2": 1.0}


def _m(**meta) -> dict:
    return {"metadata": meta}


@dataclass
class TrainConfig:
    """Everything that defines a training run (and nothing that does not, e.g. output paths).

    Each field's type hint and ``metadata`` (range, choices) are what :mod:`dsrsd.validate`
    checks; the dataset and method parameters are checked against their loader's and model's
    signatures, the weights against :data:`DEFAULT_WEIGHTS`.

    Warm-up and model selection: the terms of ``WARMUP_CHOICES[warmup_terms]`` ramp linearly
    over epochs ``0 .. warmup_epochs - 1`` (:func:`dsrsd.losses.warmup_factor`; full weight from
    epoch ``warmup_epochs - 1``). With ``select_after_warmup`` no checkpoint is chosen and
    patience does not count before epoch ``warmup_epochs``, the first epoch after the ramp; a
    run of at most ``warmup_epochs`` epochs keeps its last epoch. The defaults (``"reg"``,
    ``False``) are the book's runs: selection from epoch 0.
    """

    method: str = "dsrsd"
    dataset: str = "synthetic"
    data_params: dict = field(default_factory=dict)
    method_params: dict = field(default_factory=dict)
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    epochs: int = field(default=30, **_m(min=1, max=100_000))
    batch_size: int = field(default=256, **_m(min=1, max=1_000_000))
    lr: float = field(default=1e-3, **_m(min=0, min_open=True, max=1e3))
    weight_decay: float = field(default=1e-4, **_m(min=0, max=1e3))
    d: int = field(default=64, **_m(min=1, max=16_384))
    seq_encoder: str = field(default="gru", **_m(choices=("gru", "transformer")))
    dropout: float = field(default=0.1, **_m(min=0, max=1, max_open=True))
    modality_dropout: float = field(default=0.0, **_m(min=0, max=1, max_open=True))
    warmup_epochs: int = field(default=5, **_m(min=0, max=100_000))
    patience: int = field(default=5, **_m(min=1, max=100_000))
    grad_clip: float = field(default=1.0, **_m(min=0, max=1e6))
    seed: int = field(default=0, **_m(min=0, max=2**32 - 1))
    device: str = "auto"
    amp: bool = True
    warmup_terms: str = field(default="reg", **_m(choices=tuple(WARMUP_CHOICES)))
    select_after_warmup: bool = False
    # Per-step (KT) tasks: 0 = plain batches; B > 0 = length-bucketed training batches (sorted
    # by window length within chunks of B batches) and every batch trimmed to its longest window
    length_buckets: int = field(default=0, **_m(min=0, max=1_000_000))

    def __post_init__(self) -> None:
        from dsrsd.validate import check_config
        check_config(self)
        if self.device not in ("auto", "cpu", "cuda") and not (
                self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise DsrsdError(f"unknown device {self.device!r} (auto, cpu, cuda, cuda:N)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise DsrsdError(f"a run config must be an object {{key: value}}, got {d!r:.80}")
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise DsrsdError(f"unknown config key(s): {sorted(bad)} (allowed: {', '.join(sorted(known))})")
        return cls(**d)

    def warmup(self) -> dict[str, int]:
        """Term name -> warm-up length in epochs (the terms ``warmup_terms`` names)."""
        return {t: self.warmup_epochs for t in WARMUP_CHOICES[self.warmup_terms]}

    def selection_start(self) -> int:
        """The first epoch whose checkpoint may be chosen (and from which patience counts)."""
        return self.warmup_epochs if self.select_after_warmup else 0

    def hash(self) -> str:
        """Short stable hash of the config, excluding the device (results should not differ)
        and the :data:`HASH_OMITTED_AT_DEFAULT` fields and :data:`WEIGHTS_OMITTED_AT_DEFAULT`
        weights while they hold their default."""
        d = self.to_dict()
        d.pop("device")
        for f in fields(self):
            if f.name in HASH_OMITTED_AT_DEFAULT and d[f.name] == f.default:
                d.pop(f.name)
        d["weights"] = {k: w for k, w in d["weights"].items()
                        if WEIGHTS_OMITTED_AT_DEFAULT.get(k) != w}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
