"""The quantities of the vanishing-gradients bound (Razin et al., ICLR 2024, Theorem 1), as we read it:

    ‖∇V_x(θ)‖ ≤ 6 · L · γ(x; θ) · std_{y∼π_θ(·|x)}[r(x, y)]^{2/3},

for rewards in [−1, 1], with L the output length and γ(x; θ) the largest spectral norm, over
every output prefix y_<l (l = 1 … L), of the Jacobian of the next-token logits with respect to
all parameters θ. The constant 6 and the definition of γ are our best reading; they could not be
confirmed against the paper's text from this machine (``claims.BOUND_CONSTANT_CONFIRMED``).

On this task L = 2 and there are 1 + V prefixes per prompt: the prompt alone and the prompt
followed by each first token y1. γ is computed two ways:

- ``gamma_lower``: a lower bound from one forward pass. The logits are z = W_U h + b, so the
  Jacobian's columns for (W_U, b) alone give J Jᵀ ⪰ (‖h‖² + 1)·I: γ ≥ √(‖h‖² + 1). A bound
  checked with γ from below is checked conservatively (the ratio ‖∇V_x‖ / bound is too large,
  never too small).
- ``gamma_exact``: the exact value. The logits have only V = 12 outputs, so the V × V Gram matrix
  J Jᵀ (V vector-Jacobian products, by ``torch.func.jacrev``) gives σ_max exactly, for fewer
  products than power iteration would need (two per iteration).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, jacrev

from dpo_toolkit.core.data import encode_prompt
from dpo_toolkit.core.ensemble import model_device
from dpo_toolkit.core.model import Transformer

BOUND_CONSTANT = 6.0  # our reading of Theorem 1's constant (module docstring)


def _prefixes(prompt: int, d_vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt's output prefixes: the prompt alone (1, P) and the prompt + each first token (V, P + 1)."""
    first = torch.tensor([encode_prompt(int(prompt))], device=device)  # (1, P)
    y1 = torch.arange(d_vocab, device=device)[:, None]  # (V, 1)
    return first, torch.cat([first.expand(d_vocab, -1), y1], dim=1)


@torch.no_grad()
def gamma_lower(model: Transformer, prompts: np.ndarray) -> np.ndarray:
    """√(max over output prefixes of ‖h‖² + 1) per prompt, h the final hidden state (after the last
    LayerNorm) at the prefix's last position: a lower bound on γ(x; θ) (module docstring). (n,) float64."""
    device, vocab = model_device(model), model.cfg.d_vocab
    norms = []
    for prompt in np.asarray(prompts).tolist():
        first, second = _prefixes(prompt, vocab, device)
        h_first = model.hidden(first)[0][:, -1]  # (1, D)
        h_second = model.hidden(second)[0][:, -1]  # (V, D)
        norms.append(torch.cat([h_first, h_second]).double().pow(2).sum(-1).max())
    return (torch.stack(norms) + 1).sqrt().cpu().numpy()


def logit_jacobian_norms(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """σ_max of ∂z/∂θ for each sequence, z (V,) the logits at its last position and θ every parameter
    of the model. tokens: (B, T). Returns (B,) float64: √λ_max of the V × V Gram matrix J Jᵀ."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def last_logits(p: dict) -> torch.Tensor:
        return functional_call(model, p, (tokens,))[:, -1]  # (B, V)

    jacobian = jacrev(last_logits)(params)  # name → (B, V, *shape)
    gram = sum(j.flatten(2).double() @ j.flatten(2).double().transpose(1, 2) for j in jacobian.values())  # (B, V, V)
    return torch.linalg.eigvalsh(gram)[:, -1].clamp(min=0).sqrt()


def gamma_exact(model: Transformer, prompt: int) -> float:
    """γ(x; θ) of one prompt: the largest ``logit_jacobian_norms`` over its 1 + V output prefixes."""
    first, second = _prefixes(prompt, model.cfg.d_vocab, model_device(model))
    return float(torch.cat([logit_jacobian_norms(model, first), logit_jacobian_norms(model, second)]).max())


def bound_ratio(grad_norm, std, gamma, length: int) -> np.ndarray:
    """‖∇V_x‖ / (6 · L · γ · std^{2/3}) per case: ≤ 1 wherever the bound holds; NaN where std = 0
    (the bound is then 0 and so is the gradient of a softmax policy)."""
    grad_norm, std, gamma = (np.asarray(a, dtype=float) for a in (grad_norm, std, gamma))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, grad_norm / (BOUND_CONSTANT * length * gamma * std ** (2 / 3)), np.nan)
