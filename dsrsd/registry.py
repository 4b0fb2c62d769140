"""One registry that builds every method from a config.

Adding a method: one file implementing the contract of :mod:`dsrsd.base` (a
:class:`~dsrsd.base.FusionModel` subclass, or a :class:`~dsrsd.base.DirectFit` whose fitting
routine goes in :data:`dsrsd.fitting.FITTERS`) plus one line in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable

from dsrsd.base import Method
from dsrsd.config import TrainConfig
from dsrsd.data.batch import ModalitySpec, MultimodalData, TaskSpec
from dsrsd.errors import DsrsdError

Builder = Callable[[TrainConfig, list[ModalitySpec], TaskSpec, MultimodalData], Method]


def _common(cfg: TrainConfig) -> dict:
    return {"d": cfg.d, "seq_encoder": cfg.seq_encoder, "dropout": cfg.dropout,
            "modality_dropout": cfg.modality_dropout}


# Set by the run config itself (TrainConfig fields), never by method_params.
COMMON = ("specs", "task", "d", "seq_encoder", "dropout", "modality_dropout")


def _model_classes() -> dict[str, tuple]:
    """method -> (model class, its parameters set by the builder or by the config, extra
    builder-level parameters as {name: (hint, default)})."""
    from dsrsd.baselines import CoAttention, EarlyFusion, LateFusion, LateLogitFusion, Unimodal
    from dsrsd.clear import ClearMixin
    from dsrsd.coral import COrAL, COrALProbe
    from dsrsd.gbdt import GBDT
    from dsrsd.kt_models import AKT, DKT
    from dsrsd.misa import MISA
    from dsrsd.model import DSRSDNet
    from dsrsd.validate import signature_hints
    probe = signature_hints(COrALProbe, drop=("net",))
    return {
        "dsrsd": (DSRSDNet, (), {}), "early": (EarlyFusion, (), {}),
        "unimodal": (Unimodal, (), {}), "late": (LateFusion, (), {}),
        "late_logit": (LateLogitFusion, (), {}), "coattention": (CoAttention, (), {}),
        "gbdt": (GBDT, ("seed",), {}),
        "coral": (COrAL, ("with_head",), {"protocol": str, **probe}),
        "clear": (ClearMixin, ("train",), {"base": str, "base_params": dict}),
        "misa": (MISA, (), {}), "dkt": (DKT, (), {}), "akt": (AKT, (), {}),
    }


# CLEAR's rank is ``k`` in method_params (the paper's name); DSRSD-Net's own k goes in base_params
_RENAME = {"clear": {"rank": "k"}}


def method_param_hints(method: str) -> tuple[dict, dict]:
    """The ``method_params`` that ``method`` takes -> (type hints, ranges), read from its model's
    constructor (minus what the config sets) plus the builder's own options.

    Ranges follow the defaults: an integer whose default is >= 1 must be >= 1; a number whose
    default is non-negative must be non-negative.
    """
    import inspect

    from dsrsd.validate import signature_hints
    cls, drop, extra = _model_classes()[method]
    hints = signature_hints(cls, drop=(*COMMON, *drop))
    target = cls.__init__
    defaults = {n: p.default for n, p in inspect.signature(target).parameters.items()}
    metas = {}
    for name in hints:
        dflt = defaults.get(name)
        if isinstance(dflt, bool) or not isinstance(dflt, (int, float)):
            continue
        if isinstance(dflt, int) and dflt >= 1:
            metas[name] = {"min": 1}
        elif dflt >= 0:
            metas[name] = {"min": 0}
    for old, new in _RENAME.get(method, {}).items():
        hints[new] = hints.pop(old)
        if old in metas:
            metas[new] = metas.pop(old)
    return {**hints, **extra}, metas


def _params(cfg: TrainConfig) -> dict:
    from dsrsd.validate import check_method_params
    check_method_params(cfg.method, cfg.method_params)
    return dict(cfg.method_params)


def build_dsrsd(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.model import DSRSDNet
    return DSRSDNet(specs, task, **_common(cfg), **_params(cfg))


def build_early(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.baselines import EarlyFusion
    return EarlyFusion(specs, task, **_common(cfg), **_params(cfg))



def build_unimodal(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.baselines import Unimodal
    return Unimodal(specs, task, **_common(cfg), **_params(cfg))


def build_late(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.baselines import LateFusion
    return LateFusion(specs, task, **_common(cfg), **_params(cfg))


def build_late_logit(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.baselines import LateLogitFusion
    return LateLogitFusion(specs, task, **_common(cfg), **_params(cfg))


def build_coattention(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.baselines import CoAttention
    return CoAttention(specs, task, **_common(cfg), **_params(cfg))


def build_gbdt(cfg: TrainConfig, specs, task, train) -> Method:
    from dsrsd.gbdt import GBDT
    return GBDT(specs, task, seed=cfg.seed, **_params(cfg))


def build_coral(cfg: TrainConfig, specs, task, train) -> Method:
    """COrAL; method_params ``protocol`` = supervised (default) | probe (see dsrsd/coral.py).

    Supervised: the aux term ``coral`` (``w_s``, ``w_u``, ``w_o`` applied inside) gets the
    weight ``cfg.weights["coral"]``, set here to 1.0 when absent (so the record shows it).
    """
    from dsrsd.coral import COrAL, COrALProbe
    params = _params(cfg)
    protocol = params.pop("protocol", "supervised")
    probe_fine = params.pop("probe_fine", 29)
    if protocol == "probe":
        if task.kind == "per_step":
            raise DsrsdError("coral protocol='probe' does not support per-step tasks "
                             "(use protocol='supervised')")
        return COrALProbe(COrAL(specs, task, **_common(cfg), **params, with_head=False),
                          probe_fine=probe_fine)
    if protocol != "supervised":
        raise DsrsdError(f"coral: unknown protocol {protocol!r} (expected supervised or probe)")
    return COrAL(specs, task, **_common(cfg), **params)


def build_clear(cfg: TrainConfig, specs, task, train) -> Method:
    """CLEAR plug-in: method_params base, k, lam, mode, pair, base_params (see dsrsd/clear.py)."""
    from dsrsd.clear import BASES
    params = _params(cfg)
    base = params.pop("base", "early")
    if base not in BASES:
        raise DsrsdError(f"clear: unknown base {base!r} (expected one of {', '.join(BASES)})")
    base_params = dict(params.pop("base_params", {}) or {})
    from dsrsd.validate import check_keys, signature_hints
    plain = BASES[base].__mro__[2]  # the base model under ClearMixin (e.g. EarlyFusion)
    check_keys(f"clear: base {base}: parameter", base_params, signature_hints(plain, drop=COMMON))
    if "k" in params:  # CLEAR's rank; the base's own ``k`` (DSRSD stream size) is in base_params
        params["rank"] = params.pop("k")
    return BASES[base](specs, task, **_common(cfg), **base_params, **params, train=train)


def build_misa(cfg: TrainConfig, specs, task, train) -> Method:
    """MISA; the aux term ``misa`` gets ``cfg.weights["misa"]``, set to 1.0 when absent."""
    from dsrsd.misa import MISA
    params = _params(cfg)
    return MISA(specs, task, **_common(cfg), **params)

def build_dkt(cfg: TrainConfig, specs, task, train) -> Method:
    """DKT on the ``kt`` history alone (dsrsd/kt_models.py); ``cfg.seq_encoder`` does not apply."""
    from dsrsd.kt_models import DKT
    return DKT(specs, task, **_common(cfg), **_params(cfg))


def build_akt(cfg: TrainConfig, specs, task, train) -> Method:
    """AKT on the ``kt`` history alone (dsrsd/kt_models.py); ``cfg.seq_encoder`` does not apply."""
    from dsrsd.kt_models import AKT
    return AKT(specs, task, **_common(cfg), **_params(cfg))


METHODS: dict[str, Builder] = {
    "dsrsd": build_dsrsd,
    "early": build_early,
    "unimodal": build_unimodal,
    "late": build_late,
    "late_logit": build_late_logit,
    "coattention": build_coattention,
    "gbdt": build_gbdt,
    "coral": build_coral,
    "clear": build_clear,
    "misa": build_misa,
    "dkt": build_dkt,
    "akt": build_akt,
}


def build_model(cfg: TrainConfig, specs: list[ModalitySpec], task: TaskSpec,
                train: MultimodalData) -> Method:
    """Construct ``cfg.method`` for these modalities and task (``train`` for data-fitted parts)."""
    if cfg.method not in METHODS:
        raise DsrsdError(f"unknown method {cfg.method!r} (expected one of {', '.join(METHODS)})")
    try:
        return METHODS[cfg.method](cfg, specs, task, train)
    except DsrsdError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as e:
        # parameters of the right type that the model still cannot be built with
        msg = (str(e).splitlines() or [""])[0][:200]
        raise DsrsdError(f"method {cfg.method!r} cannot be built with parameters "
                         f"{cfg.method_params} ({type(e).__name__}: {msg})") from None
