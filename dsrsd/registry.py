"""One registry that builds every method from a config. Adding a method: one file + one line."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dsrsd.config import TrainConfig
from dsrsd.data.batch import ModalitySpec, MultimodalData, TaskSpec
from dsrsd.errors import DsrsdError

Builder = Callable[[TrainConfig, list[ModalitySpec], TaskSpec, MultimodalData], nn.Module]


def _common(cfg: TrainConfig) -> dict:
    return {"d": cfg.d, "seq_encoder": cfg.seq_encoder, "dropout": cfg.dropout,
            "modality_dropout": cfg.modality_dropout}


def _params(cfg: TrainConfig, allowed: set[str]) -> dict:
    bad = set(cfg.method_params) - allowed
    if bad:
        raise DsrsdError(f"method {cfg.method!r} does not take parameter(s) {sorted(bad)} "
                         f"(allowed: {sorted(allowed) or 'none'})")
    return dict(cfg.method_params)


def build_dsrsd(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.model import DSRSDNet
    allowed = {"k", "fusion", "temperature", "regression", "decorrelation", "orthogonality",
               "max_aux_rows"}
    return DSRSDNet(specs, task, **_common(cfg), **_params(cfg, allowed))


def build_early(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.baselines import EarlyFusion
    return EarlyFusion(specs, task, **_common(cfg), **_params(cfg, set()))



def build_unimodal(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.baselines import Unimodal
    return Unimodal(specs, task, **_common(cfg), **_params(cfg, {"modality"}))


def build_late(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.baselines import LateFusion
    return LateFusion(specs, task, **_common(cfg), **_params(cfg, {"head_dropout"}))


def build_late_logit(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.baselines import LateLogitFusion
    return LateLogitFusion(specs, task, **_common(cfg), **_params(cfg, set()))


def build_coattention(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.baselines import CoAttention
    return CoAttention(specs, task, **_common(cfg), **_params(cfg, {"layers", "heads", "tab_tokens"}))


def build_gbdt(cfg: TrainConfig, specs, task, train) -> nn.Module:
    from dsrsd.gbdt import GBDT
    allowed = {"max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf",
               "l2_regularization", "n_iter_no_change", "max_vocab"}
    return GBDT(specs, task, seed=cfg.seed, **_params(cfg, allowed))


def build_coral(cfg: TrainConfig, specs, task, train) -> nn.Module:
    """COrAL; method_params ``protocol`` = supervised (default) | probe (see dsrsd/coral.py).

    Supervised: the aux term ``coral`` (``w_s``, ``w_u``, ``w_o`` applied inside) gets the
    weight ``cfg.weights["coral"]``, set here to 1.0 when absent (so the record shows it).
    """
    from dsrsd.coral import COrAL, COrALProbe
    allowed = {"protocol", "ortho", "w_s", "w_u", "w_o", "mask_ratio", "temperature", "heads",
               "tab_tokens", "proj_hidden", "proj_dim", "noise", "max_drop", "max_aux_rows",
               "probe_fine"}
    params = _params(cfg, allowed)
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


def build_clear(cfg: TrainConfig, specs, task, train) -> nn.Module:
    """CLEAR plug-in: method_params base, k, lam, mode, pair, base_params (see dsrsd/clear.py)."""
    from dsrsd.clear import BASES
    params = _params(cfg, {"base", "k", "lam", "mode", "pair", "base_params"})
    base = params.pop("base", "early")
    if base not in BASES:
        raise DsrsdError(f"clear: unknown base {base!r} (expected one of {', '.join(BASES)})")
    base_params = dict(params.pop("base_params", {}) or {})
    base_allowed = {"dsrsd": {"k", "fusion", "temperature", "regression", "decorrelation",
                              "orthogonality", "max_aux_rows"}, "late": {"head_dropout"}}
    bad = set(base_params) - base_allowed.get(base, set())
    if bad:
        raise DsrsdError(f"clear: base {base!r} does not take parameter(s) {sorted(bad)}")
    if "k" in params:  # CLEAR's rank; the base's own ``k`` (DSRSD stream size) is in base_params
        params["rank"] = params.pop("k")
    return BASES[base](specs, task, **_common(cfg), **base_params, **params, train=train)


def build_misa(cfg: TrainConfig, specs, task, train) -> nn.Module:
    """MISA; the aux term ``misa`` gets ``cfg.weights["misa"]``, set to 1.0 when absent."""
    from dsrsd.misa import MISA
    allowed = {"w_sim", "w_diff", "w_recon", "heads", "head_dropout", "cmd_moments",
               "max_aux_rows"}
    params = _params(cfg, allowed)
    return MISA(specs, task, **_common(cfg), **params)

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
}


def build_model(cfg: TrainConfig, specs: list[ModalitySpec], task: TaskSpec,
                train: MultimodalData) -> nn.Module:
    """Construct ``cfg.method`` for these modalities and task (``train`` for data-fitted parts)."""
    if cfg.method not in METHODS:
        raise DsrsdError(f"unknown method {cfg.method!r} (expected one of {', '.join(METHODS)})")
    return METHODS[cfg.method](cfg, specs, task, train)
