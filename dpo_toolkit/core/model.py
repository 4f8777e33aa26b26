"""The 1-layer decoder-only transformer of Park §3.3.

Pre-norm block: resid_mid = x + attn(ln1(x)); resid_post = resid_mid + mlp(ln2(resid_mid));
logits = unembed(ln_final(resid_post)). With d_model 128, 4 heads, MLP width 128,
10 positions and 12 tokens it has 104,204 parameters, of which the attention
module (W_QKV, W_O with biases) holds 66,048, the paper's "65K/104K".
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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

    def forward(self, x: torch.Tensor):
        """Attention output (B, T, D) and pattern (B, n_heads, T, T). Plain matmuls, so that
        torch.func.vmap batches it over stacked weights (fused SDPA has no batching rule)."""
        B, T, D = x.shape
        q, k, v = self.W_QKV(x).split(D, dim=-1)  # 3 × (B, T, D)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, dh)
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # (B, nh, T, T)
        z = pattern @ v  # (B, nh, T, dh)
        attn_out = self.W_O(z.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
        return attn_out, pattern


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
        hidden, pattern = self.hidden(tokens)  # (B, T, D)
        logits = self.unembed(hidden)  # (B, T, V)
        return (logits, pattern) if return_pattern else logits

    def hidden(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden embedding h (batch, seq, d_model), after the final LayerNorm, so that
        logits = unembed.weight @ h + unembed.bias; and the attention pattern (batch, n_heads, seq, seq)."""
        T = tokens.shape[1]
        if self.cfg.n_ctx < T:
            raise ValueError(f"sequence length {T} exceeds ModelConfig.n_ctx={self.cfg.n_ctx}")
        positions = torch.arange(T, device=tokens.device)
        resid_pre = self.embed(tokens) + self.pos_embed(positions)  # (B, T, D)
        attn_out, pattern = self.attn(self.ln1(resid_pre))  # (B, T, D)
        resid_mid = resid_pre + attn_out  # (B, T, D)
        resid_post = resid_mid + self.mlp(self.ln2(resid_mid))  # (B, T, D)
        return self.ln_final(resid_post), pattern


def build_model(cfg: ModelConfig, seed: int) -> Transformer:
    """A freshly initialised model; the global RNG state is left untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Transformer(cfg)


def group_param_counts(model: nn.Module) -> dict[str, int]:
    """Number of parameters in each group of PARAM_GROUPS."""
    counts = dict.fromkeys(PARAM_GROUPS, 0)
    for name, p in model.named_parameters():
        counts[param_group(name)] += p.numel()
    return counts


def load_model(path: str | Path, cfg: ModelConfig) -> Transformer:
    """A frozen model of architecture cfg with the state dict saved at `path`."""
    model = Transformer(cfg)
    model.load_state_dict(torch.load(path))
    return model.eval().requires_grad_(False)
