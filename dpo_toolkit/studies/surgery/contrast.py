"""Park Fig. 3 (left): a test prompt where policy A answers out of distribution and B inside it, with
both models' attention patterns on it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.config import ModelConfig
from dpo_toolkit.core.data import VOCAB
from dpo_toolkit.core.generate import greedy_answers, greedy_sequences
from dpo_toolkit.core.model import Transformer, load_model


def pick_contrast_prompt(prompts: np.ndarray, answers_a: list, answers_b: list, window: int) -> int:
    """The prompt of Park Fig. 3 (left): A's greedy answer is OOD, B's is in the window.

    Among such prompts, the one where B is closest to the prompt, then the smallest
    prompt. Raises if there is none.
    """
    candidates = []
    for s, a, b in zip(prompts.tolist(), answers_a, answers_b, strict=True):
        a_ood = a is None or abs(a - s) > window
        if a_ood and b is not None and abs(b - s) <= window:
            candidates.append((abs(b - s), s))
    if not candidates:
        raise ValueError("no test prompt where A answers OOD and B answers in the window")
    return min(candidates)[1]


def last_weights(sweep: pd.DataFrame, seed: int, beta: float) -> str:
    """The weights file of the last checkpoint of (seed, β) in `sweep` (β matched exactly)."""
    return sweep[(sweep["seed"] == seed) & (sweep["beta"] == beta)].sort_values("step")["weights"].iloc[-1]


def attention_maps(policies: Mapping[str, Transformer], prompt: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Each policy's attention pattern (n_heads, L, L) on its own greedy sequence for `prompt`, cut
    after its last response token (L tokens), and the characters of that sequence, by name."""
    patterns, labels = {}, {}
    for name, policy in policies.items():
        sequence = greedy_sequences(policy, [prompt])
        length = int(sequence.response_mask[0].nonzero().max()) + 1
        tokens = sequence.tokens[:, :length]
        _, pattern = policy(tokens, return_pattern=True)
        patterns[name] = pattern[0].cpu().numpy()
        labels[name] = [VOCAB[t] for t in tokens[0].tolist()]
    return patterns, labels


@dataclass(frozen=True)
class ContrastExample:
    """Park Fig. 3 (left): the seed and prompt where A's greedy answer is OOD and B's is in the
    window, with the attention maps of both there (``attention_maps``; A first, then B); seed and
    prompt are None, the maps empty, when no seed has such a prompt. `notes`: one line per seed
    searched without one."""

    seed: int | None
    prompt: int | None
    patterns: dict[str, np.ndarray]
    labels: dict[str, list[str]]
    notes: tuple[str, ...] = ()

    def answer(self, name: str) -> str:
        """The response of policy `name`: its sequence after the prompt's digits and the '='."""
        return "".join(self.labels[name][len(str(self.prompt)) + 1 :])

    def report(self) -> str:
        """What the chapter prints: the notes, then the seed, the prompt and both answers."""
        lines = list(self.notes)
        if self.prompt is not None:
            a, b = self.labels
            lines.append(f"seed {self.seed}, prompt {self.prompt}: A answers {self.answer(a)!r}, B answers {self.answer(b)!r}")
        return "\n".join(lines)


def contrast_example(
    sweep: pd.DataFrame,
    prompts: np.ndarray,
    seeds: Iterable[int],
    beta_a: float,
    beta_b: float,
    window: int,
    model_cfg: ModelConfig,
    device: str | torch.device = "cpu",
) -> ContrastExample:
    """Park Fig. 3 (left) from the last checkpoints of A (beta_a) and B (beta_b) in `sweep`: the
    first seed, in the order of `seeds`, that has a contrast prompt (``pick_contrast_prompt`` over
    their greedy answers to `prompts`), that prompt and both models' attention maps there. A seed
    without one gets a note instead of a prompt picked by hand; no seed after the first that has
    one is loaded."""
    notes = []
    for seed in seeds:
        policy_a, policy_b = (load_model(last_weights(sweep, seed, b), model_cfg, device) for b in (beta_a, beta_b))
        answers_a, answers_b = greedy_answers(policy_a, prompts), greedy_answers(policy_b, prompts)
        try:
            prompt = pick_contrast_prompt(prompts, answers_a, answers_b, window)
        except ValueError as error:
            notes.append(f"seed {seed}: {error}")
            continue
        patterns, labels = attention_maps({f"A (β={beta_a:g})": policy_a, f"B (β={beta_b:g})": policy_b}, prompt)
        return ContrastExample(seed, prompt, patterns, labels, tuple(notes))
    return ContrastExample(None, None, {}, {}, tuple(notes))


# Verdict thresholds, fixed before any run.
