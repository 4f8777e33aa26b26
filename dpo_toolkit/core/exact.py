"""Exact probabilities of a policy's responses on the number-line task, by enumeration.

Decoding (``generate.py``) emits tokens after 'ABC=' until '.' or until the context is
full, so a prompt's responses are the leaves of a finite tree whose probabilities sum
to 1. A response is *aligned* when it parses to an answer in [s − W, s + W] (Park's
in-distribution set; leading zeros allowed, as ``decode_response`` reads them) and
*unaligned* otherwise: out of the window, or unparseable. At temperature T every
next-token distribution is softmax(logits / T).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .config import ModelConfig
from .data import END, decode_response, encode_prompt
from .ensemble import Ensemble, as_ensemble, model_device, rows_per_call
from .model import Transformer, load_model

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


@dataclass(frozen=True)
class _Level:
    """The nodes at one depth of the aligned prefix trees of a group of prompts (one row per node).

    parent: index of the node's parent in the previous level; token: the token leading to it from
    the parent; prompt: the prompt (position in the group) whose tree it belongs to; children
    (nodes, vocab): the tokens that stay inside the tree ('.' when the node spells an aligned answer).
    """

    parent: torch.Tensor
    token: torch.Tensor
    prompt: torch.Tensor
    children: torch.Tensor

    def to(self, device: torch.device) -> _Level:
        return _Level(*(t.to(device) for t in (self.parent, self.token, self.prompt, self.children)))


@functools.lru_cache(maxsize=256)  # a chapter evaluates the same test prompts at every checkpoint
def _aligned_levels(prompts: tuple[int, ...], window: int, max_digits: int, vocab: int) -> list[_Level]:
    """Depth by depth, the prefix trees of the aligned responses of prompts that share one encoded
    length (``in_window_strings`` followed by '.'). Level 0 holds the roots, one per prompt."""
    strings = [in_window_strings(s, window, max_digits) for s in prompts]
    index: dict[tuple[int, tuple[int, ...]], int] = {}  # (prompt, prefix) → row in its level
    levels: list[dict] = []
    for depth in range(max_digits + 1):
        rows = {"parent": [], "token": [], "prompt": [], "children": []}
        for p, digits in enumerate(strings):
            for d in digits:
                if len(d) < depth or (p, tuple(d[:depth])) in index:
                    continue
                prefix = tuple(d[:depth])
                index[p, prefix] = len(rows["prompt"])
                rows["parent"].append(index[p, prefix[:-1]] if depth else p)
                rows["token"].append(prefix[-1] if depth else END)
                rows["prompt"].append(p)
                rows["children"].append(set())
            for d in digits:  # the tokens that continue each node of this depth inside the tree
                if len(d) >= depth:
                    rows["children"][index[p, tuple(d[:depth])]].add(d[depth] if len(d) > depth else END)
        if not rows["prompt"]:
            break
        children = torch.zeros((len(rows["prompt"]), vocab), dtype=torch.bool)
        for n, kids in enumerate(rows["children"]):
            children[n, list(kids)] = True
        levels.append(rows | {"children": children})
    return [_Level(torch.tensor(r["parent"]), torch.tensor(r["token"]), torch.tensor(r["prompt"]), r["children"]) for r in levels]


def _segment_logsumexp(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    """log Σ exp over the last axis of values (M, n) within each segment (n,) → (M, n_segments); -inf when empty."""
    index = segment.expand_as(values)
    peak = torch.full((values.shape[0], n_segments), -torch.inf, dtype=values.dtype, device=values.device).scatter_reduce(
        1, index, values, reduce="amax"
    )
    shift = torch.where(peak.isfinite(), peak, 0.0)
    total = torch.zeros_like(peak).index_add_(1, segment, (values - shift.gather(1, index)).exp())
    return total.log() + shift


def _walk_trees(model, tokens: torch.Tensor, levels: list, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(aligned | s) and log P(unaligned | s), each (M, g) on the CPU, of g prompts of one encoded
    length (`tokens`, (g, length)), walking their aligned prefix trees (`levels`) depth by depth."""
    n_models, group_size = len(model), tokens.shape[0]
    logits, cache = model.extend(tokens.expand(n_models, -1, -1))  # (M, g, length, vocab)
    next_logps = (logits[:, :, -1].double() / temperature).log_softmax(-1)  # (M, g, vocab) at the roots
    node_logps = torch.zeros((n_models, group_size), dtype=torch.float64, device=tokens.device)  # reaching each root
    aligned, leaving = [], []
    for depth, level in enumerate(levels):
        if depth:  # this level's nodes: their parents' cache and log-prob, extended by one token
            node_logps = node_logps[:, level.parent] + next_logps[:, level.parent, level.token]
            cache = tuple(c[:, level.parent] for c in cache)
            logits, cache = model.extend(level.token.expand(n_models, -1)[..., None], cache)
            next_logps = (logits[:, :, -1].double() / temperature).log_softmax(-1)  # (M, nodes, vocab)
        aligned.append(node_logps + next_logps[..., END].masked_fill(~level.children[:, END], -torch.inf))
        leaving.append(node_logps + next_logps.masked_fill(level.children, -torch.inf).logsumexp(-1))
    owner = torch.cat([level.prompt for level in levels])  # (all nodes,) → prompt within the group
    log_aligned = _segment_logsumexp(torch.cat(aligned, dim=1), owner, group_size).cpu()
    log_unaligned = _segment_logsumexp(torch.cat(leaving, dim=1), owner, group_size).cpu()
    return log_aligned, log_unaligned


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

    The trees are walked depth by depth with the attention cache (``Transformer.extend``), so
    each node's next-token distribution is computed once, for all prompts of one encoded
    length together. Returns two arrays of shape (n_prompts,) for a model, (M, n_prompts) for an ensemble.
    """
    _check_temperature(temperature)
    model = as_ensemble(policy)
    n_models, n_ctx, vocab, device = len(model), model.cfg.n_ctx, model.cfg.d_vocab, model_device(model)
    prompts = [int(s) for s in np.asarray(prompts).tolist()]
    log_aligned = torch.full((n_models, len(prompts)), -torch.inf, dtype=torch.float64)
    log_unaligned = torch.zeros((n_models, len(prompts)), dtype=torch.float64)  # stays 0 (all mass) without a tree
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(prompts):
        by_length.setdefault(len(encode_prompt(s)), []).append(i)
    chunk = max(1, rows_per_call(n_models) // 8)  # prompts per pass: each brings up to a few dozen nodes per depth
    for length, members in by_length.items():
        max_digits = n_ctx - length - 1
        members = [i for i in members if in_window_strings(prompts[i], window, max_digits)]
        for start in range(0, len(members), chunk):
            group = members[start : start + chunk]
            levels = [level.to(device) for level in _aligned_levels(tuple(prompts[i] for i in group), window, max_digits, vocab)]
            tokens = torch.tensor([encode_prompt(prompts[i]) for i in group], device=device)  # (g, length)
            rows = torch.tensor(group)
            log_aligned[:, rows], log_unaligned[:, rows] = _walk_trees(model, tokens, levels, temperature)
    log_aligned, log_unaligned = log_aligned.numpy(), log_unaligned.numpy()
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
    frontier, frontier_logps = torch.tensor([start]), torch.zeros(1, dtype=torch.float64)  # on the CPU; the model on its device
    while len(frontier):
        next_logps = (policy(frontier.to(model_device(policy)))[:, -1].double().cpu() / temperature).log_softmax(-1)  # (n, vocab)
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
    weights: list[str],
    steps: list[int],
    cfg: ModelConfig,
    prompts: np.ndarray,
    window: int,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """``response_masses`` of the models saved at `weights` (one per step), evaluated as one
    ensemble on `device`. Returns one row per checkpoint and prompt: step, prompt, log_aligned, log_unaligned."""
    if len(weights) != len(steps):
        raise ValueError(f"one weights file per step: {len(weights)} files for {len(steps)} steps")
    models = [load_model(path, cfg, device) for path in weights]
    log_aligned, log_unaligned = response_masses(Ensemble(models), prompts, window, temperature)  # (K, n) each
    return pd.DataFrame(
        {
            "step": np.repeat(steps, len(prompts)),
            "prompt": np.tile(prompts, len(steps)),
            "log_aligned": log_aligned.ravel(),
            "log_unaligned": log_unaligned.ravel(),
        }
    )
