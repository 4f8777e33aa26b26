"""Likelihood displacement in the paper's theory (Razin et al., arXiv 2410.08847; Razin's talk,
part 2): single-token DPO in the *unconstrained-features* model, where the hidden embedding
h of the prompt and the unembedding matrix W are the trained parameters and
π(·|x) = softmax(W h). One DPO step lowers log π(y+) when ⟨W_y+, W_y−⟩ is large, and moves
mass to tokens z in proportion to ⟨W_z, W_y+ − W_y−⟩.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.losses import dpo_loss


def single_token_dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    y_pos: int | torch.Tensor,
    y_neg: int | torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``losses.dpo_loss`` of one prompt with single-token responses y+ and y−.
    policy_logps, reference_logps: (..., V) log-probs over the vocabulary; y_pos, y_neg: token ids,
    one for every row or a tensor (...) of one per row. Returns (...)."""

    def at(logps: torch.Tensor, token: int | torch.Tensor) -> torch.Tensor:  # logps[..., token] row by row: (...)
        index = torch.as_tensor(token, device=logps.device).expand(logps.shape[:-1])
        return logps.gather(-1, index[..., None])[..., 0]

    losses, _, _ = dpo_loss(
        at(policy_logps, y_pos), at(policy_logps, y_neg), at(reference_logps, y_pos), at(reference_logps, y_neg), beta
    )
    return losses


def unconstrained_logps(h: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """log softmax(W h): h (d,), W (V, d) → (V,)."""
    return (W @ h).log_softmax(-1)


def first_order_logp_change(
    h: torch.Tensor,
    W: torch.Tensor,
    reference_logps: torch.Tensor,
    y_pos: int,
    y_neg: int,
    beta: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """d/dη log π(z) at η = 0 for one gradient-descent step of size η on (h, W), every z: (V,).

    π = softmax(W h + bias), with the bias (if any) held fixed. With c = β σ(−β margin), the
    step is Δh = η c (W_y+ − W_y−), ΔW_y+ = η c h, ΔW_y− = −η c h, so the logit of
    z ∉ {y+, y−} moves by η c ⟨W_z, W_y+ − W_y−⟩, and Δ log π(z) = Δlogit_z − Σ_k π(k) Δlogit_k:
    the paper's theorem that mass goes to z in proportion to ⟨W_z, W_y+ − W_y−⟩.
    """
    logps = (W @ h + (0 if bias is None else bias)).log_softmax(-1)
    margin = (logps[y_pos] - reference_logps[y_pos]) - (logps[y_neg] - reference_logps[y_neg])
    c = beta * torch.sigmoid(-beta * margin)
    dlogit = c * (W @ (W[y_pos] - W[y_neg]))  # (V,), from Δh
    dlogit[y_pos] = dlogit[y_pos] + c * (h @ h)  # from ΔW_y+
    dlogit[y_neg] = dlogit[y_neg] - c * (h @ h)  # from ΔW_y−
    return dlogit - (logps.exp() * dlogit).sum()


def first_order_terms(
    h: torch.Tensor, W: torch.Tensor, reference_logps: torch.Tensor, y_pos: int, y_neg: int, beta: float, bias=None
) -> tuple[float, float]:
    """The two terms of ``first_order_logp_change`` at y+ (per unit step; Razin et al., the one-step
    change of log π(y+)), with c = β σ(−β margin) and d = W_y+ − W_y−:

    - from the step on W: c ‖h‖² (1 − π(y+) + π(y−)), never negative;
    - from the step on h: c Σ_z π(z) ⟨W_y+ − W_z, d⟩, negative only when tokens carrying mass are
      more aligned with d than y+ is — the only term left when W is held fixed (a frozen head).
    """
    logps = (W @ h + (0 if bias is None else bias)).log_softmax(-1)
    probs = logps.exp()
    margin = (logps[y_pos] - reference_logps[y_pos]) - (logps[y_neg] - reference_logps[y_neg])
    c = beta * torch.sigmoid(-beta * margin)
    d = W[y_pos] - W[y_neg]
    from_W = c * (h @ h) * (1 - probs[y_pos] + probs[y_neg])
    from_h = c * (probs * ((W[y_pos] - W) @ d)).sum()
    return float(from_W), float(from_h)


def projection_rank(W: torch.Tensor, y_pos: int, y_neg: int) -> int:
    """y+'s rank (1 = first) among all tokens z by ⟨W_z, W_y+ − W_y−⟩: at rank 1 no token is more
    aligned with the step than y+ itself, and the h-term of the one-step change cannot be negative."""
    projection = W @ (W[y_pos] - W[y_neg])
    return int((projection > projection[y_pos]).sum()) + 1


def features_dpo(
    h: torch.Tensor, W: torch.Tensor, bias: torch.Tensor, y_pos: int, y_neg: int, beta: float, lr: float, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-token DPO by plain gradient descent on (h, W) of the unconstrained-features model
    softmax(W h + bias), bias fixed, from π_ref = the starting point. Returns (π_ref, π_θ), (V,) each."""
    h, W = h.detach().double().clone().requires_grad_(True), W.detach().double().clone().requires_grad_(True)
    bias = bias.detach().double()
    with torch.no_grad():
        reference_logps = (W @ h + bias).log_softmax(-1)
    for _ in range(steps):
        loss = single_token_dpo_loss((W @ h + bias).log_softmax(-1), reference_logps, y_pos, y_neg, beta)
        grad_h, grad_W = torch.autograd.grad(loss, [h, W])
        with torch.no_grad():
            h -= lr * grad_h
            W -= lr * grad_W
    with torch.no_grad():
        return reference_logps.exp(), (W @ h + bias).softmax(-1)


def random_features_study(
    n_instances: int,
    n_tokens: int,
    dim: int,
    h_scale: float,
    beta: float,
    lr: float,
    steps: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """The paper's theoretical setting on random instances: W with N(0, 1) rows, h with
    N(0, h_scale²) entries, (y+, y−) = tokens (0, 1). One row per instance: inner_pos_neg =
    ⟨W_y+, W_y−⟩; dlogp_pos_first_order, the one-step change of log π(y+) per unit step
    (``first_order_logp_change``); z_corr, Pearson over z ∉ {y+, y−} of ⟨W_z, W_y+ − W_y−⟩
    against that change; and p_pos_before, p_pos_after after `steps` steps of ``features_dpo``.
    Instances are drawn on the CPU (the same on every device) and computed on `device`."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_instances):
        W = torch.randn(n_tokens, dim, generator=generator, dtype=torch.float64).to(device)
        h = h_scale * torch.randn(dim, generator=generator, dtype=torch.float64).to(device)
        reference_logps = (W @ h).log_softmax(-1)
        change = first_order_logp_change(h, W, reference_logps, 0, 1, beta)
        inner_z = W[2:] @ (W[0] - W[1])
        before, after = features_dpo(h, W, torch.zeros(n_tokens, dtype=torch.float64, device=device), 0, 1, beta, lr, steps)
        rows.append(
            {
                "inner_pos_neg": float(W[0] @ W[1]),
                "dlogp_pos_first_order": float(change[0]),
                "z_corr": float(np.corrcoef(inner_z.cpu().numpy(), change[2:].cpu().numpy())[0, 1]),
                "p_pos_before": float(before[0]),
                "p_pos_after": float(after[0]),
            }
        )
    return pd.DataFrame(rows)
