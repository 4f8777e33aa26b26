"""Batched decoding: greedy answers (Park §3.3, "sampling is done greedily") and
ancestral samples for the KL estimate. Decoding runs until '.' or the context ends."""

from __future__ import annotations

import numpy as np
import torch

from .data import END, PAD, Batch, decode_response, encode_prompt
from .model import Transformer


@torch.no_grad()
def _decode(model: Transformer, prompts: np.ndarray, generator: torch.Generator | None) -> Batch:
    """Decode one response per prompt; greedy when generator is None, else sampled at temperature 1.

    Prompts are grouped by length so that each group decodes as one batch.
    Returns the full sequences, right-padded to n_ctx, in the order of `prompts`,
    with response_mask True on generated tokens up to and including the first '.'.
    """
    n_ctx = model.cfg.n_ctx
    tokens = torch.full((len(prompts), n_ctx), PAD, dtype=torch.long)
    response_mask = torch.zeros((len(prompts), n_ctx), dtype=torch.bool)
    encoded = [encode_prompt(int(s)) for s in prompts]
    for length in sorted({len(p) for p in encoded}):
        rows = torch.tensor([i for i, p in enumerate(encoded) if len(p) == length])
        seq = torch.tensor([encoded[i] for i in rows.tolist()])  # (rows, length)
        alive = torch.ones(len(rows), dtype=torch.bool)
        for t in range(length, n_ctx):
            next_logits = model(seq)[:, -1]  # (rows, vocab)
            if generator is None:
                next_token = next_logits.argmax(-1)
            else:
                next_token = torch.multinomial(next_logits.softmax(-1), 1, generator=generator).squeeze(-1)
            next_token = torch.where(alive, next_token, PAD)
            seq = torch.cat([seq, next_token[:, None]], dim=1)
            response_mask[rows, t] = alive
            alive &= next_token != END
            if not alive.any():
                break
        tokens[rows, : seq.shape[1]] = seq
    return Batch(tokens, response_mask)


def greedy_answers(model: Transformer, prompts: np.ndarray) -> list[int | None]:
    """The integer each prompt's greedy response spells, or None when unparseable."""
    batch = _decode(model, prompts, generator=None)
    return [decode_response(row[mask]) for row, mask in zip(batch.tokens, batch.response_mask, strict=True)]


def sample_responses(model: Transformer, prompts: np.ndarray, n_samples: int, seed: int) -> Batch:
    """n_samples ancestral samples per prompt, rows ordered prompt-major (prompt i → rows i·n … i·n + n − 1)."""
    generator = torch.Generator().manual_seed(seed)
    return _decode(model, np.repeat(prompts, n_samples), generator)
