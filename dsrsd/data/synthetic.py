"""The embedded benchmark: modalities generated from planted shared and private factors.

Every modality sees the same shared factors ``z_s`` and its own private factors ``z_p[m]``,
mixed by a random (mildly non-linear) map, scaled, and corrupted by noise. One modality can be
*dominant*: large scale plus high-variance nuisance features unrelated to the label. The label
needs both shared and private information (optionally a synergy term that needs two modalities
at once). The factors are returned, so decomposition is measured, not only accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from dsrsd.data.batch import ModalitySpec, MultimodalData, Splits, TaskSpec
from dsrsd.errors import DsrsdError


@dataclass
class SyntheticConfig:
    """Knobs of the generator. ``kinds`` sets the number of modalities (``M = len(kinds)``)."""

    n: int = 3000
    kinds: tuple[str, ...] = ("tabular", "tabular", "sequence")
    dims: tuple[int, ...] = (24, 24, 6)
    seq_len: int = 8
    n_shared: int = 4
    n_private: int = 4
    scales: tuple[float, ...] = (1.0, 1.0, 1.0)
    nuisance: tuple[int, ...] = (0, 0, 0)  # high-variance label-free features appended
    nuisance_scale: float = 5.0
    noise: float = 0.1
    nonlinearity: float = 0.3
    synergy: float = 0.0
    label_weights: tuple[float, float] = (1.0, 1.0)  # (shared, private) contribution
    label_private: tuple[int, ...] | None = None  # modalities whose private factors enter y
    label_noise: float = 0.3
    missing_rate: float = 0.0
    split: tuple[float, float] = (0.7, 0.15)  # train, val fractions; the rest is test
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = len(self.kinds)
        if m < 1:
            raise DsrsdError("synthetic: zero modalities (kinds is empty)")
        for name in ("dims", "scales", "nuisance"):
            if len(getattr(self, name)) != m:
                raise DsrsdError(f"synthetic: {name} has {len(getattr(self, name))} entries, "
                                 f"kinds has {m}")
        if not 20 <= self.n <= 10_000_000:
            raise DsrsdError(f"synthetic: n must be in 20..10000000, got {self.n}")
        for name in ("seq_len", "n_shared", "n_private"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise DsrsdError(f"synthetic: {name} must be in 1..100000, got "
                                 f"{getattr(self, name)}")
        if any(k not in ("tabular", "sequence") for k in self.kinds):
            raise DsrsdError(f"synthetic: kinds must be 'tabular' or 'sequence', got {self.kinds}")
        if any(not 0 <= v <= 100_000 for v in (*self.dims, *self.nuisance)):
            raise DsrsdError(f"synthetic: dims and nuisance must be in 0..100000, got "
                             f"{self.dims}, {self.nuisance}")
        for name in ("noise", "nuisance_scale", "label_noise"):
            if getattr(self, name) < 0:
                raise DsrsdError(f"synthetic: {name} must be >= 0, got {getattr(self, name)}")
        if any(s <= 0 for s in self.scales):
            raise DsrsdError(f"synthetic: scales must be positive, got {self.scales}")
        if len(self.split) != 2 or min(self.split) <= 0 or sum(self.split) >= 1:
            raise DsrsdError(f"synthetic: split must be two positive fractions (train, val) "
                             f"summing to less than 1, got {self.split}")
        if self.label_private is not None and any(not 0 <= i < m for i in self.label_private):
            raise DsrsdError(f"synthetic: label_private must name modalities 0..{m - 1}, got "
                             f"{self.label_private}")
        if not 0 <= self.seed < 2**63:
            raise DsrsdError(f"synthetic: seed must be in 0..2**63-1, got {self.seed}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise DsrsdError(f"synthetic: missing_rate must be in [0, 1), got {self.missing_rate}")
        if any(d <= 0 for d in self.dims):
            raise DsrsdError(f"synthetic: dims must be positive, got {self.dims}")


SCENARIOS: dict[str, dict] = {
    # Balanced: every modality on the same scale, the label uses every private stream.
    "default": {},
    # Dominance: modality 0 is loud (scale 10, many high-variance nuisance features) but its
    # private factors carry no label signal; the quiet modalities' private factors do.
    # Small n so that the loud modality alone can fit the training set through its nuisance.
    "dominance": {"n": 800, "scales": (10.0, 1.0, 1.0), "nuisance": (128, 0, 0),
                  "nuisance_scale": 10.0, "label_private": (1, 2), "label_weights": (0.7, 1.3)},
}


def make_config(scenario: str = "default", **overrides) -> SyntheticConfig:
    """A :class:`SyntheticConfig` for a named scenario, with keyword overrides."""
    if scenario not in SCENARIOS:
        raise DsrsdError(f"unknown synthetic scenario {scenario!r} "
                         f"(expected one of {', '.join(SCENARIOS)})")
    fields = set(SyntheticConfig.__dataclass_fields__)
    bad = set(overrides) - fields
    if bad:
        raise DsrsdError(f"synthetic: unknown parameter(s) {sorted(bad)}")
    kw = {**SCENARIOS[scenario], **overrides}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return SyntheticConfig(**kw)


def _mix(z: torch.Tensor, out_dim: int, nonlin: float, g: torch.Generator) -> torch.Tensor:
    """Random linear map plus a tanh bend: invertible enough for encoders, not trivially linear."""
    a = torch.randn(z.shape[-1], out_dim, generator=g) / z.shape[-1] ** 0.5
    b = torch.randn(z.shape[-1], out_dim, generator=g) / z.shape[-1] ** 0.5
    return z @ a + nonlin * torch.tanh(z @ b)


def generate(cfg: SyntheticConfig) -> MultimodalData:
    """All ``cfg.n`` samples as one split; extras hold ``shared`` and ``private_<m>`` factors."""
    g = torch.Generator().manual_seed(cfg.seed)
    n, m = cfg.n, len(cfg.kinds)
    z_s = torch.randn(n, cfg.n_shared, generator=g)
    z_p = [torch.randn(n, cfg.n_private, generator=g) for _ in range(m)]
    specs, x, pad = [], {}, {}
    for i, kind in enumerate(cfg.kinds):
        name = f"m{i}"
        z = torch.cat([z_s, z_p[i]], 1)
        if kind == "tabular":
            feat = _mix(z, cfg.dims[i], cfg.nonlinearity, g)
        elif kind == "sequence":
            # Each step reveals a different random view of the factors, so the whole sequence is
            # needed; a smooth per-step gain adds temporal structure.
            steps = [_mix(z, cfg.dims[i], cfg.nonlinearity, g) for _ in range(cfg.seq_len)]
            gain = 0.5 + torch.rand(cfg.seq_len, generator=g)
            feat = torch.stack(steps, 1) * gain[None, :, None]
        else:
            raise DsrsdError(f"synthetic: modality kind {kind!r} not supported (tabular, sequence)")
        feat = cfg.scales[i] * (feat + cfg.noise * torch.randn(feat.shape, generator=g))
        if cfg.nuisance[i]:
            shape = (*feat.shape[:-1], cfg.nuisance[i])
            feat = torch.cat([feat, cfg.nuisance_scale * cfg.scales[i] * torch.randn(shape, generator=g)], -1)
        x[name] = feat.float()
        if kind == "sequence":
            pad[name] = torch.ones(n, cfg.seq_len, dtype=torch.bool)
        specs.append(ModalitySpec(name, kind, feat.shape[-1]))

    w_s = torch.randn(cfg.n_shared, generator=g)
    score = cfg.label_weights[0] * (z_s @ w_s) / w_s.norm()
    priv_mods = range(m) if cfg.label_private is None else cfg.label_private
    for i in priv_mods:
        w_p = torch.randn(cfg.n_private, generator=g)
        score = score + cfg.label_weights[1] * (z_p[i] @ w_p) / w_p.norm() / len(priv_mods) ** 0.5
    if cfg.synergy and m >= 2:
        score = score + cfg.synergy * z_p[0][:, 0] * z_p[1][:, 0]
    score = score + cfg.label_noise * torch.randn(n, generator=g)
    y = (score > score.median()).float()

    present = torch.ones(n, m, dtype=torch.bool)
    if cfg.missing_rate > 0:
        present = torch.rand(n, m, generator=g) >= cfg.missing_rate
        none = ~present.any(1)
        # Keep one random modality for rows that lost all, so every sample is usable.
        present[none, torch.randint(0, m, (int(none.sum()),), generator=g)] = True
    extras = {"shared": z_s, **{f"private_m{i}": z_p[i] for i in range(m)}}
    return MultimodalData(specs, TaskSpec("binary"), x, pad, present, y, None, extras, "synthetic")


def load_synthetic(scenario: str = "default", seed: int = 0, **overrides) -> Splits:
    """Generate and split (random, seeded) into train / val / test."""
    cfg = make_config(scenario, seed=seed, **overrides)
    data = generate(cfg)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.randperm(len(data), generator=g)
    n_tr, n_va = int(cfg.split[0] * len(data)), int(cfg.split[1] * len(data))
    parts = order[:n_tr], order[n_tr:n_tr + n_va], order[n_tr + n_va:]
    if any(len(p) == 0 for p in parts):
        raise DsrsdError(f"synthetic: an empty split with n={cfg.n} and split={cfg.split}")
    tr, va, te = (data.subset(p, f"synthetic/{s}") for p, s in zip(parts, ("train", "val", "test"), strict=False))
    return Splits(tr, va, te, {"dataset": "synthetic", "scenario": scenario, **asdict(cfg),
                               "sizes": [len(tr), len(va), len(te)]})
