"""Item-aware knowledge-tracing encoders for the ``kt`` history layout (:mod:`dsrsd.data.batch`).

The prediction at step t reads the interactions before t (skills, problem, response) and the
item of step t (skills, problem), never the response at t or anything after t. Both encoders
return ``[B, T, d]``, one vector per step, like the other per-step encoders.

Embeddings (:class:`KTEmbedding`) follow AKT's Rasch model (Ghosh et al. 2020, book/papers.md):
item ``x_t = c_s + mu_q d_s`` and interaction ``y_t = e_(s,r) + mu_q f_(s,r)``, with ``mu_q`` a
scalar difficulty of problem q (zero-initialised, so an unseen problem is its skills alone). A
multi-skill item averages its skill terms (``nn.EmbeddingBag``, padding excluded).

* :class:`KTRecurrentEncoder` (``seq_encoder="gru"``), DKT-style: a recurrent net over
  ``[y_{t-1}; x_t]`` (``y_{-1} = 0``).
* :class:`KTAttentionEncoder` (``seq_encoder="transformer"``), AKT-style: a knowledge encoder
  (self-attention over interactions, step t sees <= t), a question encoder (over items, <= t)
  and a knowledge retriever whose query at t is the encoded item t and whose keys and values are
  the encoded items and interactions *before* t, plus a learned null key/value (one step before
  the first) so that step 0 has something to attend to. AKT's own parts: the three blocks,
  post-norm layers, one projection shared by queries and keys, no position embeddings (order
  comes from the decay). Our simplifications, by default: AKT's decay ``exp(-theta d(t, tau))``
  uses a context-aware distance that needs a second softmax pass; here ``d`` is the plain step
  distance ``t - tau``, a per-head bias ``-theta_h (t - tau)`` (``theta_h = softplus`` of a
  learned scalar) on the logits, so each attention is one call of
  ``scaled_dot_product_attention`` (:class:`DecayAttention`); and no dropout on the attention
  weights (residual dropout only). ``distance="context"`` and ``attn_dropout`` restore AKT's
  versions (unfused, slower), to measure what the simplifications cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsrsd.data.batch import ModalitySpec, kt_columns
from dsrsd.errors import DsrsdError


def _bag(emb: nn.EmbeddingBag, ids: Tensor) -> Tensor:
    """``[B, T, K]`` id sets -> ``[B, T, d]`` (mean over non-padding ids, 0 for an empty set)."""
    b, t, k = ids.shape
    return emb(ids.reshape(b * t, k)).view(b, t, -1)


class KTEmbedding(nn.Module):
    """Item and interaction embeddings of a ``kt`` layout tensor (module docstring).

    Args:
        spec: the ``kt`` modality (``n_skills`` and ``items`` size the tables).
        d: embedding size.
        rasch: add the problem term ``mu_q`` (False: skills only, as DKT).
    """

    def __init__(self, spec: ModalitySpec, d: int, rasch: bool = True):
        super().__init__()
        n_skill, n_inter = spec.n_skills + 1, 2 * spec.n_skills + 1
        self.c = nn.EmbeddingBag(n_skill, d, mode="mean", padding_idx=0)
        self.e = nn.EmbeddingBag(n_inter, d, mode="mean", padding_idx=0)
        self.rasch = rasch
        if rasch:
            self.d_var = nn.EmbeddingBag(n_skill, d, mode="mean", padding_idx=0)
            self.f_var = nn.EmbeddingBag(n_inter, d, mode="mean", padding_idx=0)
            # [items, 1]: a matrix, so AdamW's weight decay is AKT's L2 penalty on mu_q
            self.mu = nn.Embedding(spec.items, 1, padding_idx=0)
            nn.init.zeros_(self.mu.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Items ``x_t`` and interactions ``y_t``, both ``[B, T, d]``."""
        skills, problem, resp = kt_columns(x)
        tokens = torch.where(skills > 0, (skills - 1) * 2 + resp.unsqueeze(-1) + 1, 0)
        item, inter = _bag(self.c, skills), _bag(self.e, tokens)
        if self.rasch:
            mu = self.mu(problem)
            item = item + mu * _bag(self.d_var, skills)
            inter = inter + mu * _bag(self.f_var, tokens)
        return item, inter


class KTRecurrentEncoder(nn.Module):
    """DKT-style: a GRU (or LSTM) over ``[y_{t-1}; x_t]``; LayerNorm on the states unless
    ``norm`` is False (the ``dkt`` method reads the raw states, as DKT's output layer does)."""

    def __init__(self, spec: ModalitySpec, d: int, dropout: float = 0.1, cell: str = "gru",
                 rasch: bool = True, norm: bool = True):
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise DsrsdError(f"unknown recurrent cell {cell!r} (expected gru or lstm)")
        self.emb = KTEmbedding(spec, d, rasch)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(2 * d, d, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d) if norm else nn.Identity()

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        item, inter = self.emb(x)
        prev = F.pad(inter, (0, 0, 1, 0))[:, :-1]  # interaction t-1 at step t, zeros at step 0
        # Padding is trailing and the recurrence causal: padded steps never reach valid ones.
        out, _ = self.rnn(self.drop(torch.cat([prev, item], -1)))
        return self.norm(out)


DISTANCES = ("step", "context")


def _context_attention(qh: Tensor, kh: Tensor, vh: Tensor, allowed: Tensor, pos: Tensor,
                       theta: Tensor, dh: int, p_drop: float) -> Tensor:
    """AKT's monotonic attention with its context-aware distance (the unfused path).

    ``d(t, tau) = |t - tau| * sum of the (detached) attention weights of t on the keys after
    tau``, and the scores are multiplied by ``exp(-theta_h sqrt(d))``, as in AKT: a key counts
    as far when the steps between it and the query drew attention. Positions come from ``pos``
    (the null key, if any, sits one step before the first).
    """
    scores = qh @ kh.transpose(-1, -2) * dh ** -0.5  # [B, H, T, Tk], float32
    with torch.no_grad():
        w = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
        # attention on the keys after tau: a shifted reverse cumsum, exactly 0 for the last key
        after = F.pad(w.flip(-1).cumsum(-1).flip(-1)[..., 1:], (0, 1))
        t = scores.shape[-2]
        gap = (pos[-t:, None] - pos[None, :]).abs()  # |t - tau| in steps
        dist = (after * gap).sqrt()  # both factors are >= 0 by construction
    effect = torch.exp(-theta[:, None, None] * dist).clamp(min=1e-5)  # <= 1, as theta >= 0
    w = torch.softmax((scores * effect).masked_fill(~allowed, float("-inf")), -1)
    return F.dropout(w, p_drop, training=p_drop > 0) @ vh


class DecayAttention(nn.Module):
    """Multi-head attention with a learned per-head decay in step distance (module docstring).

    ``strict``: query t sees keys < t (else <= t). ``null``: a learned key/value placed one step
    before the first, which every query sees, so a strict step 0 is never an all-masked row.

    The decay bias ``-theta_h (t - tau)`` equals ``theta_h tau`` up to a constant per query
    row, which softmax ignores; so it rides in one extra key feature ``theta_h tau`` (query
    feature ``sqrt(d_h)``). The mask is then a constant boolean one, and
    ``scaled_dot_product_attention`` can use its fused kernel while ``theta`` still gets
    gradients (a learned float mask forces the slower unfused path on CPU). The scores are
    computed in float32 because ``theta_h tau`` grows with T.
    """

    def __init__(self, d: int, heads: int, null: bool = False, distance: str = "step",
                 attn_dropout: float = 0.0):
        super().__init__()
        if distance not in DISTANCES:
            raise DsrsdError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if not 0 <= attn_dropout < 1:
            raise DsrsdError(f"attn_dropout must be in [0, 1), got {attn_dropout}")
        self.heads, self.distance, self.attn_dropout = heads, distance, float(attn_dropout)
        self.qk = nn.Linear(d, d)  # AKT's kq_same: queries and keys share one projection
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.gamma = nn.Parameter(torch.zeros(heads))
        self.null_k = nn.Parameter(torch.randn(heads, 1, d // heads) * 0.02) if null else None
        self.null_v = nn.Parameter(torch.zeros(heads, 1, d // heads)) if null else None

    def forward(self, q: Tensor, k: Tensor, v: Tensor, strict: bool) -> Tensor:
        b, t, d = q.shape
        dh = d // self.heads

        def split(h: Tensor) -> Tensor:
            return h.view(b, -1, self.heads, dh).transpose(1, 2).float()

        qh, kh, vh = split(self.qk(q)), split(self.qk(k)), split(self.v(v))
        steps = torch.arange(t, device=q.device)
        allowed = steps[:, None] > steps[None, :] if strict else steps[:, None] >= steps[None, :]
        pos = (steps - (t - 1)).float()  # <= 0, so the extra feature stays bounded by theta T
        if self.null_k is not None:
            kh = torch.cat([self.null_k.float().expand(b, -1, -1, -1), kh], 2)
            vh = torch.cat([self.null_v.float().expand(b, -1, -1, -1), vh], 2)
            pos = torch.cat([pos[:1] - 1, pos])
            allowed = torch.cat([allowed.new_ones(t, 1), allowed], 1)
        theta = F.softplus(self.gamma.float())
        p_drop = self.attn_dropout if self.training else 0.0
        if self.distance == "context":
            out = _context_attention(qh, kh, vh, allowed, pos, theta, dh, p_drop)
        else:
            qx = torch.cat([qh, qh.new_full((b, self.heads, t, 1), dh ** 0.5)], -1)
            kx = torch.cat([kh, (theta[:, None] * pos).expand(b, -1, -1).unsqueeze(-1)], -1)
            vx = F.pad(vh, (0, 1))  # the fused kernel wants one head size for q, k and v
            # Attention dropout is off by default (AKT has it): on CPU it draws a [B, H, T, T]
            # mask per call and was the largest cost of an AKT step; residual dropout stays.
            out = F.scaled_dot_product_attention(qx, kx, vx, attn_mask=allowed,
                                                 scale=dh ** -0.5, dropout_p=p_drop)[..., :dh]
        return self.out(out.transpose(1, 2).reshape(b, t, d).to(q.dtype))


class AKTLayer(nn.Module):
    """AKT's post-norm layer: ``x = LN(q + attn)``, then ``LN(x + FF(x))`` when ``ff``."""

    def __init__(self, d: int, heads: int, dropout: float, null: bool = False, ff: bool = True,
                 distance: str = "step", attn_dropout: float = 0.0, ff_mult: int = 2):
        super().__init__()
        self.attn = DecayAttention(d, heads, null, distance, attn_dropout)
        self.ln1 = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * d, d)) if ff else None
        self.ln2 = nn.LayerNorm(d) if ff else None

    def forward(self, q: Tensor, k: Tensor, v: Tensor, strict: bool = False) -> Tensor:
        x = self.ln1(q + self.drop(self.attn(q, k, v, strict)))
        if self.ff is None:
            return x
        return self.ln2(x + self.drop(self.ff(x)))


class KTAttentionEncoder(nn.Module):
    """AKT-style: knowledge encoder, question encoder and knowledge retriever (module docstring).

    ``forward`` gives ``LN(GELU(W [h_t; x_t]))`` (retrieved knowledge and item); ``retrieve``
    gives both parts, which the ``akt`` method feeds to its own predictor (``project=False``
    leaves out the projection it would not use).
    """

    def __init__(self, spec: ModalitySpec, d: int, dropout: float = 0.1, layers: int = 1,
                 heads: int = 4, rasch: bool = True, project: bool = True, distance: str = "step",
                 attn_dropout: float = 0.0, ff_mult: int = 2, retriever_ff_mult: int = 2):
        super().__init__()
        if d % heads:
            raise DsrsdError(f"hidden size d={d} must be divisible by heads={heads}")
        if layers < 1:
            raise DsrsdError(f"the KT attention encoder needs layers >= 1, got {layers}")
        for name, mult in (("ff_mult", ff_mult), ("retriever_ff_mult", retriever_ff_mult)):
            if not (isinstance(mult, int) and mult >= 1):
                raise DsrsdError(f"{name} must be an integer >= 1, got {mult!r}")
        self.emb = KTEmbedding(spec, d, rasch)
        att = {"distance": distance, "attn_dropout": attn_dropout}
        self.knowledge = nn.ModuleList(AKTLayer(d, heads, dropout, ff_mult=ff_mult, **att)
                                       for _ in range(layers))
        self.question = nn.ModuleList(AKTLayer(d, heads, dropout, ff=False, **att)
                                      for _ in range(layers))
        self.retriever = nn.ModuleList(AKTLayer(d, heads, dropout, null=True,
                                                ff_mult=retriever_ff_mult, **att)
                                       for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.LayerNorm(d)) \
            if project else None

    def retrieve(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Retrieved knowledge ``h_t`` (interactions < t, items <= t) and item ``x_t``."""
        item, inter = self.emb(x)
        y = inter
        for layer in self.knowledge:
            y = layer(y, y, y)
        h = item
        for question, retriever in zip(self.question, self.retriever, strict=True):
            h = question(h, h, h)
            h = retriever(h, h, y, strict=True)
        return h, item

    def forward(self, x: Tensor, pad: Tensor | None = None) -> Tensor:
        if self.out is None:
            raise DsrsdError("KTAttentionEncoder(project=False) has no per-step output; "
                             "use retrieve()")
        return self.out(torch.cat(self.retrieve(x), -1))


def kt_encoder(spec: ModalitySpec, d: int, seq_encoder: str, per_step: bool,
               dropout: float) -> nn.Module:
    """The encoder of a ``kt`` history: recurrent for ``gru``, attention for ``transformer``."""
    if not per_step:
        raise DsrsdError(f"modality {spec.name!r}: layout 'kt' needs a per-step task")
    if seq_encoder == "gru":
        return KTRecurrentEncoder(spec, d, dropout)
    if seq_encoder == "transformer":
        return KTAttentionEncoder(spec, d, dropout)
    raise DsrsdError(f"unknown seq_encoder {seq_encoder!r} (expected gru or transformer)")


__all__ = ["AKTLayer", "DecayAttention", "KTAttentionEncoder", "KTEmbedding",
           "KTRecurrentEncoder", "kt_encoder"]
