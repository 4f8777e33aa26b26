"""Batched decoding: greedy answers (Park §3.3, "sampling is done greedily") and
ancestral samples for the KL estimate. Decoding runs until '.' or the context ends.

Every function takes a single ``Transformer`` or an ``Ensemble`` of M models; results
for an ensemble carry a leading model dimension (M, ...).
"""

from __future__ import annotations

import numpy as np
import torch

from .data import END, PAD, Batch, decode_response, encode_prompt
from .ensemble import Ensemble, SingleModel, as_ensemble, model_device, rows_per_call
from .model import Transformer


@torch.no_grad()
def _decode(policy: Ensemble | SingleModel, prompts: np.ndarray, generator: torch.Generator | None) -> Batch:
    """Decode one response per prompt and model; greedy when generator is None, else sampled at temperature 1.

    Sampling draws one uniform per prompt row and step, shared by all models, so a
    model's samples do not depend on which ensemble it is evaluated in.

    Everything runs on the policy's device; the result is there too.
    Prompts are grouped by length, and each group decodes in chunks of 4 × rows_per_call rows,
    incrementally: each step computes only the new token, against the cached attention keys and
    values of the earlier ones (``Transformer.extend``).
    Returns sequences (M, n_prompts, n_ctx), right-padded, in the order of `prompts`,
    with response_mask True on generated tokens up to and including the first '.'.
    """
    n_models, n_ctx = len(policy), policy.cfg.n_ctx
    device = model_device(policy)
    tokens = torch.full((n_models, len(prompts), n_ctx), PAD, dtype=torch.long, device=device)
    response_mask = torch.zeros((n_models, len(prompts), n_ctx), dtype=torch.bool, device=device)
    if generator is not None:  # drawn up front on the CPU, so that neither chunking nor the device changes them
        uniforms = torch.rand((len(prompts), n_ctx), generator=generator, dtype=torch.float64).to(device)
    encoded = [encode_prompt(int(s)) for s in prompts]
    chunk = 4 * rows_per_call(n_models)  # a step computes one token per row, not a whole sequence
    for length in sorted({len(p) for p in encoded}):
        group = [i for i, p in enumerate(encoded) if len(p) == length]
        for start in range(0, len(group), chunk):
            rows = torch.tensor(group[start : start + chunk], device=device)
            seq = torch.tensor([encoded[i] for i in rows.tolist()], device=device).expand(n_models, -1, -1)  # (M, rows, length)
            alive = torch.ones(n_models, len(rows), dtype=torch.bool, device=device)
            logits, cache = policy.extend(seq)  # (M, rows, length, vocab); keys/values of the prompt
            for t in range(length, n_ctx):
                next_logits = logits[:, :, -1]  # (M, rows, vocab)
                if generator is None:
                    next_token = next_logits.argmax(-1)  # (M, rows)
                else:  # inverse-CDF sampling with one uniform per row shared by all models (common random numbers)
                    cdf = next_logits.double().softmax(-1).cumsum(-1)  # (M, rows, vocab)
                    next_token = (cdf < uniforms[rows, t, None]).sum(-1).clamp(max=cdf.shape[-1] - 1)  # (M, rows)
                next_token = torch.where(alive, next_token, PAD)
                seq = torch.cat([seq, next_token[..., None]], dim=-1)
                response_mask[:, rows, t] = alive
                alive &= next_token != END
                if not alive.any() or t + 1 == n_ctx:
                    break
                logits, cache = policy.extend(next_token[..., None], cache)  # only the new token is computed
            tokens[:, rows, : seq.shape[-1]] = seq
    return Batch(tokens, response_mask)


def decoded_answers(batch: Batch) -> list:
    """The integer each decoded row of `batch` (M, n, T) spells, None when unparseable: a list (models) of lists."""
    return [
        [decode_response(row[mask]) for row, mask in zip(tokens, masks, strict=True)]
        for tokens, masks in zip(batch.tokens.cpu(), batch.response_mask.cpu(), strict=True)
    ]


def greedy_answers(policy: Transformer | Ensemble | SingleModel, prompts: np.ndarray) -> list:
    """The integer each prompt's greedy response spells, None when unparseable.

    A list over prompts for one Transformer; a list (models) of such lists for an ensemble.
    """
    answers = decoded_answers(_decode(as_ensemble(policy), prompts, generator=None))
    return answers[0] if isinstance(policy, Transformer) else answers


def greedy_sequences(policy: Transformer | Ensemble | SingleModel, prompts: np.ndarray) -> Batch:
    """Each prompt followed by its greedy response, right-padded, on the policy's device: (n_prompts, n_ctx)
    for one Transformer, (M, n_prompts, n_ctx) for an ensemble; response_mask as in decoding."""
    batch = _decode(as_ensemble(policy), prompts, generator=None)
    return Batch(batch.tokens[0], batch.response_mask[0]) if isinstance(policy, Transformer) else batch


def sample_responses(policy: Transformer | Ensemble | SingleModel, prompts: np.ndarray, n_samples: int, seed: int) -> Batch:
    """n_samples ancestral samples per prompt, rows ordered prompt-major (prompt i → rows i·n … i·n + n − 1).

    Shapes (n_prompts · n_samples, n_ctx) for one Transformer, (M, n_prompts · n_samples, n_ctx) for an ensemble;
    on the policy's device.
    """
    generator = torch.Generator().manual_seed(seed)
    batch = _decode(as_ensemble(policy), np.repeat(prompts, n_samples), generator)
    return Batch(batch.tokens[0], batch.response_mask[0]) if isinstance(policy, Transformer) else batch
