"""The displacement map's runs (``displacement_map.run_map``): where each starts, single-prompt DPO from
every start under every head and optimizer as one ensemble per (head, optimizer), and one row per run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.studies.likelihood_displacement.persona import GROUP_OF, PersonaConfig
from dpo_toolkit.studies.likelihood_displacement.single_prompt import single_prompt_dpo_members
from dpo_toolkit.studies.likelihood_displacement.study import displacement_row, lm_features, theory_row


class MapStart(NamedTuple):
    """Where one run of the map starts, before its head and optimizer are chosen."""

    corpus: PersonaConfig
    reference: Transformer  # the rebalanced LM
    prompt: torch.Tensor  # (T,)
    y_pos: str
    y_neg: str
    cell: dict  # its coordinates: lead weight, scale, pair, seed, statement
    block: int  # its (seed, lead weight, scale, pair) in the grid's order; head and optimizer nest inside it


def trained_rows(
    starts: list[MapStart], heads: Sequence[str], optimizers: dict[str, float], beta: float, steps: int
) -> list[dict]:
    """Single-prompt DPO from every start under every head and optimizer (name → learning rate), the runs of
    one head and optimizer as the members of one ensemble. One row per run (``_map_row``), in the grid's
    nesting: seed, lead weight, scale, pair, head, optimizer, statement. A run's geometry is computed once per
    start and the theory's variables once per start and head (neither depends on the optimizer)."""
    h_to_w = [_h_to_w(start) for start in starts]
    tokens = [(start.corpus.token(start.y_pos), start.corpus.token(start.y_neg)) for start in starts]
    references, prompts = [start.reference for start in starts], torch.stack([start.prompt for start in starts])
    keyed = []
    for h, head in enumerate(heads):
        theories = [theory_row(s.reference, s.prompt, *pair, beta, head) for s, pair in zip(starts, tokens, strict=True)]
        for o, (optimizer, lr) in enumerate(optimizers.items()):
            train_cfg = TrainConfig(optimizer=optimizer, lr=lr, weight_decay=0.0, epochs=steps, batch_size=1, grad_clip=None,
                                    n_evals=1)  # fmt: skip
            before, after = single_prompt_dpo_members(references, prompts, *zip(*tokens, strict=True), beta, train_cfg, head)
            for k, start in enumerate(starts):
                row = _map_row(start, h_to_w[k], theories[k], before[k], after[k])
                keyed.append(((start.block, h, o, k), row | {"head": head, "optimizer": optimizer, "lr": lr}))
    return [row for _, row in sorted(keyed, key=lambda item: item[0])]


def _h_to_w(start: MapStart) -> float:
    """‖h‖² / mean ‖W_z‖² of the run's reference at its prompt."""
    h, W, _ = lm_features(start.reference, start.prompt)
    return float((h @ h) / (W * W).sum(-1).mean())


def _map_row(start: MapStart, h_to_w: float, theory: dict, before: torch.Tensor, after: torch.Tensor) -> dict:
    """One run of the map: ‖h‖² / mean ‖W_z‖², the theory's variables at the reference (``theory_row``), what
    single-prompt DPO did (``displacement_row`` of π before and after) and the run's coordinates."""
    row = displacement_row(start.corpus, before, after, start.y_pos, start.y_neg)
    observed = row["dlogp_pos"]
    return {
        "similar": GROUP_OF[start.y_pos] == GROUP_OF[start.y_neg],
        "h_to_w": h_to_w,
        **theory,
        **row,
        "agrees": (theory["predicted"] < 0) == (observed < 0),  # the predicted sign of Δ log π(y+) is the observed one
    } | start.cell
