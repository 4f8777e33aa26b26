"""The 1-layer decoder-only transformer of Park §3.3.

Pre-norm block: resid_mid = x + attn(ln1(x)); resid_post = resid_mid + mlp(ln2(resid_mid));
logits = unembed(ln_final(resid_post)). With d_model 128, 4 heads, MLP width 128,
10 positions and 12 tokens it has 104,204 parameters, of which the attention
module (W_QKV, W_O with biases) holds 66,048, the paper's "65K/104K".
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from .config import ModelConfig

# Parameter groups, named once (Park §4.3: "attention weights are all parameters of
# the multi-headed attention module, linear projections included").
PARAM_GROUPS: dict[str, tuple[str, ...]] = {
    "embeddings": ("embed.", "pos_embed."),
    "attention": ("attn.",),
    "mlp": ("mlp.",),
    "norms": ("ln1.", "ln2.", "ln_final."),
    "unembedding": ("unembed.",),
}


def param_group(name: str) -> str:
    """The group of PARAM_GROUPS that a parameter name belongs to."""
    for group, prefixes in PARAM_GROUPS.items():
        if name.startswith(prefixes):
            return group
    raise KeyError(f"parameter {name!r} belongs to no group of {list(PARAM_GROUPS)}")


class Attention(nn.Module):
    """Causal multi-head self-attention with fused W_QKV and output projection W_O."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.W_QKV = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.W_O = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Attention output (B, T, D), pattern (B, n_heads, T, T_all) and this layer's keys and values
        (each (B, n_heads, T_all, d_head)) for x of positions T_past … T_past + T − 1, where `past` holds
        the keys and values of the T_past earlier positions (None: x starts the sequence) and
        T_all = T_past + T. Plain matmuls, so that torch.func.vmap batches it over stacked weights
        (fused SDPA has no batching rule)."""
        B, T, D = x.shape
        q, k, v = self.W_QKV(x).split(D, dim=-1)  # 3 × (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, dh)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)  # (B, nh, T_all, dh)
        T_all = k.shape[-2]
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5  # (B, nh, T, T_all)
        causal = torch.ones(T, T_all, dtype=torch.bool, device=x.device).tril(diagonal=T_all - T)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # (B, nh, T, T_all)
        z = pattern @ v  # (B, nh, T, dh)
        attn_out = self.W_O(z.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        return attn_out, pattern, (k, v)


class Transformer(nn.Module):
    """Token ids (batch, seq) → next-token logits (batch, seq, d_vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)

    def forward(self, tokens: torch.Tensor, return_pattern: bool = False):
        """Logits (batch, seq, d_vocab); with return_pattern, also the attention pattern (batch, n_heads, seq, seq)."""
        hidden, pattern, _ = self._run(tokens, None)  # (B, T, D)
        logits = self.unembed(hidden)  # (B, T, V)
        return (logits, pattern) if return_pattern else logits

    def extend(self, tokens: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Incremental decoding: the logits (batch, seq, d_vocab) of `tokens`, which continue the
        sequence whose attention keys and values are `past` (None: they start it), and the keys and
        values of the whole sequence so far, to pass back with the next tokens. Equal, up to float
        rounding, to the last positions of ``forward`` on the whole sequence."""
        hidden, _, cache = self._run(tokens, past)
        return self.unembed(hidden), cache

    def hidden(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden embedding h (batch, seq, d_model), after the final LayerNorm, so that
        logits = unembed.weight @ h + unembed.bias; and the attention pattern (batch, n_heads, seq, seq)."""
        hidden, pattern, _ = self._run(tokens, None)
        return hidden, pattern

    def _run(self, tokens: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None):
        """Final hidden states (B, T, D), attention pattern and keys/values of tokens at positions T_past … T_past + T − 1."""
        start = 0 if past is None else past[0].shape[-2]
        end = start + tokens.shape[1]
        if self.cfg.n_ctx < end:
            raise ValueError(f"sequence length {end} exceeds ModelConfig.n_ctx={self.cfg.n_ctx}")
        positions = torch.arange(start, end, device=tokens.device)
        resid_pre = self.embed(tokens) + self.pos_embed(positions)  # (B, T, D)
        attn_out, pattern, cache = self.attn(self.ln1(resid_pre), past)  # (B, T, D)
        resid_mid = resid_pre + attn_out  # (B, T, D)
        resid_post = resid_mid + self.mlp(self.ln2(resid_mid))  # (B, T, D)
        return self.ln_final(resid_post), pattern, cache


class _Extender(nn.Module):
    """A module whose forward is ``Transformer.extend``, for ``functional_call`` (which calls forward)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, past):
        return self.model.extend(tokens, past)


def extend_with(model: Transformer, params: dict[str, torch.Tensor], tokens: torch.Tensor, past=None):
    """``model.extend(tokens, past)`` computed with `params` (named like model.named_parameters())
    in place of the model's own, so that torch.func transforms (grad, vmap) apply to it."""
    return functional_call(_Extender(model), {f"model.{name}": p for name, p in params.items()}, (tokens, past))


FLOAT_PERTURB = "DPO_FLOAT_PERTURB"
"""Set to 1, every freshly built model's initial weights move one ulp up (``torch.nextafter``):
a change of float order for ``make test``'s second nbval pass (tools/float_order.py), which must
leave every compared output as it was. Off by default; never set it for results you report."""


def build_model(cfg: ModelConfig, seed: int, device: str | torch.device = "cpu") -> Transformer:
    """A freshly initialised model on `device`; the global RNG state is left untouched. The weights
    are drawn on the CPU, so that a seed gives the same initial model on every device. With
    $DPO_FLOAT_PERTURB=1 they are nudged one ulp (FLOAT_PERTURB)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Transformer(cfg)
    if os.environ.get(FLOAT_PERTURB) == "1":
        with torch.no_grad():
            for weight in model.parameters():
                weight.copy_(torch.nextafter(weight, torch.full_like(weight, math.inf)))
    return model.to(device)


def group_param_counts(model: nn.Module) -> dict[str, int]:
    """Number of parameters in each group of PARAM_GROUPS."""
    counts = dict.fromkeys(PARAM_GROUPS, 0)
    for name, p in model.named_parameters():
        counts[param_group(name)] += p.numel()
    return counts


def load_model(path: str | Path, cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """A frozen model of architecture cfg on `device`, with the state dict saved at `path`."""
    model = Transformer(cfg).to(device)
    model.load_state_dict(torch.load(path, map_location=device))
    return model.eval().requires_grad_(False)
