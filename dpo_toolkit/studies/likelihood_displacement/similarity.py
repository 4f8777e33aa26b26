"""Similarity swept through 1 at matched π_ref (issue: displacement on the theory's variables, item 2):
single-token DPO in the theory's own model, softmax(W h + b), with a synthetic unembedding in which the
theory's variable r = ⟨W_y+, W_y−⟩ / ‖W_y+‖² is set by hand while π_ref is held fixed.

The persona LM cannot vary r on its own: its synonyms are close *and* of another frequency, meaning and
π_ref(y−). Here, per replicate (a seed draws h and the other tokens' rows),

    W_y+ = e1,   W_y− = r e1 + q e2,   W_z ~ N(0, σ² I / d) for the K other tokens,

and the fixed bias b puts π_ref = softmax(W h + b) at π_ref(y+) = p_pos, π_ref(y−) = p_neg and the rest
shared equally, the same at every r. Then plain gradient descent (the theory's optimizer) runs single-
token DPO from π_ref, on h alone (*frozen* head: W fixed, h trained) or on h and W (*trained*). The
prediction is the theory's first-order change of log π(y+) at the start (``theory.first_order_terms``:
the h-term alone with the head frozen, both terms with it trained); the observation is the change after
`steps` steps, *displaced* when it is ≤ ``study.DISPLACED_BELOW``.

With the other rows orthogonal to e1 and e2 the frozen prediction has a closed form: per unit step it is
c [p_neg ((1 − r)² + q²) + p_rest (1 − r)], negative between the two roots in r of that quadratic, the
first just above 1 (``orthogonal_crossings``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .study import DISPLACED_BELOW
from .theory import first_order_terms, single_token_dpo_loss

ARMS = ("frozen", "trained")
Y_POS, Y_NEG = 0, 1
# The sweep's design, fixed before it ran: r through 1 (the crossing of the orthogonal case is 1.064 at
# the defaults), ‖h‖ at the scale of W's rows and 4× below it (the W-term grows as ‖h‖², the h-term does
# not depend on it at the start), and steps enough for a predicted fall to pass DISPLACED_BELOW.
RATIOS = (0.0, 0.5, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0)
H_NORMS = (1.0, 0.25)
LR, STEPS = 1.0, 20


def synthetic_head(
    ratio: float, q: float, n_other: int, dim: int, seed: int, p_pos: float, p_neg: float, orthogonal: bool = False,
    h_norm: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(h, W, b) of one replicate at ratio r (see the module): W (2 + n_other, dim), h (dim,), b (2 + n_other,),
    float64. The other rows are N(0, 1/dim) (orthogonal to e1, e2 when `orthogonal`); h a random direction
    of norm `h_norm`; b makes π_ref exactly (p_pos, p_neg, equal shares of the rest)."""
    if not (p_pos > 0 and p_neg > 0 and p_pos + p_neg < 1):
        raise ValueError(f"p_pos and p_neg must be > 0 with p_pos + p_neg < 1; got {p_pos}, {p_neg}")
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(2 + n_other, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    if orthogonal:
        W[:, :2] = 0.0
    W[Y_POS] = 0.0
    W[Y_POS, 0] = 1.0
    W[Y_NEG] = 0.0
    W[Y_NEG, 0], W[Y_NEG, 1] = ratio, q
    h = torch.randn(dim, generator=generator, dtype=torch.float64)
    h = h_norm * h / h.norm()
    target = torch.full((2 + n_other,), (1 - p_pos - p_neg) / n_other, dtype=torch.float64)
    target[Y_POS], target[Y_NEG] = p_pos, p_neg
    return h, W, target.log() - W @ h


def gradient_descent(h, W, bias, beta: float, lr: float, steps: int, arm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` plain gradient-descent steps of single-token DPO from π_ref = softmax(W h + b), on h alone
    (arm 'frozen') or on h and W ('trained'). Returns (π_ref, π_θ), (V,) each; W is never changed in place."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}; got {arm!r}")
    h = h.detach().clone().requires_grad_(True)
    W = W.detach().clone().requires_grad_(arm == "trained")
    with torch.no_grad():
        reference_logps = (W @ h + bias).log_softmax(-1)
    trained = [h, W] if arm == "trained" else [h]
    for _ in range(steps):
        loss = single_token_dpo_loss((W @ h + bias).log_softmax(-1), reference_logps, Y_POS, Y_NEG, beta)
        grads = torch.autograd.grad(loss, trained)
        with torch.no_grad():
            for tensor, grad in zip(trained, grads, strict=True):
                tensor -= lr * grad
    with torch.no_grad():
        return reference_logps.exp(), (W @ h + bias).softmax(-1)


def similarity_sweep(
    seeds: Sequence[int], beta: float, ratios: Sequence[float] = RATIOS, h_norms: Sequence[float] = H_NORMS,
    lr: float = LR, steps: int = STEPS, q: float = 0.5, n_other: int = 10, dim: int = 16, p_pos: float = 0.5,
    p_neg: float = 0.1,
) -> pd.DataFrame:  # fmt: skip
    """One row per ‖h‖, arm, ratio and seed: the predicted first-order change of log π(y+) per unit
    step (`predicted`), the observed change after `steps` steps of size `lr` (`observed`), `displaced`
    (observed ≤ DISPLACED_BELOW) and whether the signs agree (`agree`). A seed draws h's direction and
    the other tokens' rows, the same at every ratio."""
    rows = []
    for seed, h_norm, ratio in itertools.product(seeds, h_norms, ratios):
        h, W, bias = synthetic_head(ratio, q, n_other, dim, seed, p_pos, p_neg, h_norm=h_norm)
        reference_logps = (W @ h + bias).log_softmax(-1)
        from_W, from_h = first_order_terms(h, W, reference_logps, Y_POS, Y_NEG, beta, bias=bias)
        for arm in ARMS:
            predicted = from_h if arm == "frozen" else from_W + from_h
            before, after = gradient_descent(h, W, bias, beta, lr, steps, arm)
            observed = float(after[Y_POS].log() - before[Y_POS].log())
            rows.append({"h_norm": h_norm, "arm": arm, "ratio": ratio, "seed": seed, "predicted": predicted,
                         "observed": observed, "p_pos_after": float(after[Y_POS]),
                         "displaced": observed <= DISPLACED_BELOW, "agree": np.sign(predicted) == np.sign(observed)})  # fmt: skip
    return pd.DataFrame(rows)


def orthogonal_crossings(q: float, p_pos: float, p_neg: float) -> tuple[float, float]:
    """The ratios r between which the frozen-head prediction is negative when the other rows are
    orthogonal to e1 and e2: the roots of p_neg (1 − r)² + p_rest (1 − r) + p_neg q² = 0 (NaN, NaN
    when it has none: no r displaces)."""
    p_rest = 1 - p_pos - p_neg
    disc = p_rest**2 - 4 * p_neg**2 * q**2
    if disc < 0:
        return math.nan, math.nan
    roots = [(-p_rest + s * math.sqrt(disc)) / (2 * p_neg) for s in (1, -1)]  # roots in x = 1 − r
    return 1 - roots[0], 1 - roots[1]


def sweep_summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per ‖h‖, arm and ratio: seeds, the mean predicted and observed change, the share displaced and the
    share of seeds whose observed sign is the predicted one."""
    grouped = sweep.groupby(["h_norm", "arm", "ratio"], sort=False)
    return pd.DataFrame({
        "seeds": grouped.size(),
        "predicted": grouped["predicted"].mean(),
        "observed": grouped["observed"].mean(),
        "displaced": grouped["displaced"].mean(),
        "agree": grouped["agree"].mean(),
    }).reset_index()  # fmt: skip
