"""Exact probabilities of a policy's responses on the number-line task, by enumeration.

Decoding (``generate.py``) emits tokens after 'ABC=' until '.' or until the context is
full, so a prompt's responses are the leaves of a finite tree whose probabilities sum
to 1. A response is *aligned* when it parses to an answer in [s − W, s + W] (Park's
in-distribution set; leading zeros allowed, as ``decode_response`` reads them) and
*unaligned* otherwise: out of the window, or unparseable. At temperature T every
next-token distribution is softmax(logits / T).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .config import ModelConfig
from .data import END, decode_response, encode_prompt
from .ensemble import Ensemble, as_ensemble, rows_per_call
from .model import Transformer, load_model
from .stats import logsumexp

MAX_ENUMERATED = 10**6  # leaves that enumerate_responses may visit


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")


def in_window_strings(s: int, window: int, max_digits: int) -> list[list[int]]:
    """Every digit string of at most max_digits digits that parses to an integer in
    [s − W, s + W] (leading zeros included), as lists of token ids."""
    strings = []
    for y in range(max(s - window, 0), s + window + 1):
        digits = [int(c) for c in str(y)]
        strings += [[0] * pad + digits for pad in range(max_digits - len(digits) + 1)]
    return strings


@torch.no_grad()
def response_masses(
    policy: Transformer | Ensemble, prompts: np.ndarray, window: int, temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """log P(aligned | s) and log P(unaligned | s) of every prompt, exactly, in float64.

    The aligned responses are enumerated (``in_window_strings`` followed by '.'). The
    unaligned mass is the mass that leaves their prefix tree: at each node of the tree,
    the next-token probability of every token that leads out of it, times the node's
    probability. Both are summed in log space, so an unaligned mass far below float64's
    resolution of 1 still shows as a finite logarithm. The two masses sum to 1.
    Returns two arrays of shape (n_prompts,) for a model, (M, n_prompts) for an ensemble.
    """
    _check_temperature(temperature)
    model = as_ensemble(policy)
    n_models, n_ctx = len(model), model.cfg.n_ctx
    log_aligned = np.full((n_models, len(prompts)), -np.inf)
    log_unaligned = np.full((n_models, len(prompts)), -np.inf)
    for p, s in enumerate(np.asarray(prompts).tolist()):
        prompt = encode_prompt(int(s))
        strings = in_window_strings(int(s), window, n_ctx - len(prompt) - 1)
        if not strings:  # the context cannot hold any in-window answer
            log_unaligned[:, p] = 0.0
            continue
        length = len(prompt) + max(len(d) for d in strings) + 1
        tokens = torch.full((len(strings), length), END, dtype=torch.long)
        for i, d in enumerate(strings):
            tokens[i, : len(prompt) + len(d) + 1] = torch.tensor(prompt + d + [END])
        chunk = rows_per_call(n_models)
        logits = torch.cat([model(tokens[i : i + chunk]) for i in range(0, len(strings), chunk)], dim=1)
        logps = (logits.double() / temperature).log_softmax(-1).numpy()  # (M, n_strings, length, vocab)
        nodes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, set[int]]] = {}
        completions = []
        for i, d in enumerate(strings):
            node_logp = np.zeros(n_models)
            for k, token in enumerate([*d, END]):
                next_logps = logps[:, i, len(prompt) - 1 + k]  # (M, vocab): π(· | prompt, d[:k])
                key = tuple(d[:k])
                if key not in nodes:
                    nodes[key] = (node_logp, next_logps, set())
                nodes[key][2].add(token)
                node_logp = node_logp + next_logps[:, token]
            completions.append(node_logp)
        log_aligned[:, p] = logsumexp(np.stack(completions))
        leaving = []
        for node_logp, next_logps, children in nodes.values():
            out = [t for t in range(next_logps.shape[-1]) if t not in children]
            leaving.append(node_logp + logsumexp(next_logps[:, out], axis=-1))
        log_unaligned[:, p] = logsumexp(np.stack(leaving))
    if isinstance(policy, Transformer):
        return log_aligned[0], log_unaligned[0]
    return log_aligned, log_unaligned


@torch.no_grad()
def enumerate_responses(policy: Transformer, prompt: int, temperature: float = 1.0) -> list[tuple[tuple[int, ...], float]]:
    """Every response decoding can produce for `prompt`, with its log-probability.

    A response ends at '.' or when the context is full. The tree has up to
    vocab^(n_ctx − len(prompt)) leaves, so this brute force is for small contexts; it
    raises when the worst case exceeds MAX_ENUMERATED leaves.
    """
    _check_temperature(temperature)
    start = encode_prompt(int(prompt))
    depth, vocab = policy.cfg.n_ctx - len(start), policy.cfg.d_vocab
    if depth < 1:
        raise ValueError(f"prompt {prompt} leaves no room for a response in n_ctx={policy.cfg.n_ctx}")
    if vocab**depth > MAX_ENUMERATED:
        raise ValueError(
            f"enumerate_responses: {vocab}^{depth} possible responses exceed MAX_ENUMERATED={MAX_ENUMERATED}; "
            "use response_masses for aligned/unaligned masses"
        )
    leaves = []
    frontier, frontier_logps = torch.tensor([start]), torch.zeros(1, dtype=torch.float64)
    while len(frontier):
        next_logps = (policy(frontier)[:, -1].double() / temperature).log_softmax(-1)  # (n, vocab)
        children = torch.cat([frontier.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(len(frontier))[:, None]], 1)
        child_logps = (frontier_logps[:, None] + next_logps).flatten()
        done = (children[:, -1] == END) | (children.shape[1] == policy.cfg.n_ctx)
        leaves += [(tuple(c[len(start) :].tolist()), float(lp)) for c, lp in zip(children[done], child_logps[done], strict=True)]
        frontier, frontier_logps = children[~done], child_logps[~done]
    return leaves


def is_aligned(response: tuple[int, ...], prompt: int, window: int) -> bool:
    """Whether a response (token ids after '=') parses to an answer in [s − W, s + W]."""
    answer = decode_response(list(response))
    return answer is not None and abs(answer - prompt) <= window


def masses_at_checkpoints(
    weights: list[str], steps: list[int], cfg: ModelConfig, prompts: np.ndarray, window: int, temperature: float = 1.0
) -> pd.DataFrame:
    """``response_masses`` of the models saved at `weights` (one per step), evaluated as one
    ensemble. Returns one row per checkpoint and prompt: step, prompt, log_aligned, log_unaligned."""
    if len(weights) != len(steps):
        raise ValueError(f"one weights file per step: {len(weights)} files for {len(steps)} steps")
    models = [load_model(path, cfg) for path in weights]
    log_aligned, log_unaligned = response_masses(Ensemble(models), prompts, window, temperature)  # (K, n) each
    return pd.DataFrame(
        {
            "step": np.repeat(steps, len(prompts)),
            "prompt": np.tile(prompts, len(steps)),
            "log_aligned": log_aligned.ravel(),
            "log_unaligned": log_unaligned.ravel(),
        }
    )
