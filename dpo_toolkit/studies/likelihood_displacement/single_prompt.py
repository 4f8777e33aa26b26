"""Single-prompt DPO in the tiny persona LM (Razin et al., arXiv 2410.08847, §4's setting): DPO on
one prompt with single-token responses y+ and y−, from a reference, for a fixed number of full
steps; many such runs trained at once as the members of one batched ensemble."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from dpo_toolkit.core.config import TrainConfig
from dpo_toolkit.core.ensemble import Ensemble
from dpo_toolkit.core.model import Transformer
from dpo_toolkit.core.train import fit_full_batch
from dpo_toolkit.studies.likelihood_displacement.persona import answer_logps
from dpo_toolkit.studies.likelihood_displacement.theory import single_token_dpo_loss

HEADS = ("trained", "frozen", "slow")
"""Which parameters single-prompt DPO trains: all of them; the body with the head (final LayerNorm
and unembedding) frozen — the LM's analogue of the theory's "W fixed, h trained"; or all of them with
the head at SLOW_HEAD × the learning rate (per-parameter-group rates: the theory's W-step scaled, which
the rebalancing of ‖h‖ against ‖W‖ does not do to the dynamics)."""
SLOW_HEAD = 0.1
"""The head's learning rate, as a share of the body's, in the 'slow' head: one step moves W a tenth as far."""
HEAD_PARAMETERS = ("ln_final.", "unembed.")  # the head: the final LayerNorm and the unembedding W


def single_prompt_dpo_members(
    references: Sequence[Transformer],
    prompts: torch.Tensor,
    y_pos: Sequence[int],
    y_neg: Sequence[int],
    beta: float,
    train_cfg: TrainConfig,
    head: str = "trained",
) -> tuple[torch.Tensor, torch.Tensor]:
    """M runs of single-prompt DPO at once: run i starts from references[i] and trains on prompts[i]
    (M, T) with the single-token pair (y_pos[i], y_neg[i]), train_cfg.epochs full steps of its
    optimizer, the head trained, frozen or slow (HEADS). The runs are the members of one Ensemble
    trained on the sum of their losses: each member's gradient is its own loss's, and the optimizers
    act elementwise, so this equals M separate runs up to float rounding. Returns (π_ref(·|x),
    π_θ(·|x)) over the vocabulary, (M, V) each, float64."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not len(references) == len(prompts) == len(y_pos) == len(y_neg):
        raise ValueError(f"one prompt and pair per reference: {len(references)} references, {len(prompts)} prompts, "
                         f"{len(y_pos)} y+ and {len(y_neg)} y−")  # fmt: skip
    policies = Ensemble([copy.deepcopy(r) for r in references])  # stacked weights (M, …), trainable
    tokens = prompts[:, None]  # (M, 1, T): each member its own prompt
    pos, neg = torch.as_tensor(y_pos, device=prompts.device), torch.as_tensor(y_neg, device=prompts.device)  # (M,)

    def policy_logps() -> torch.Tensor:  # log π(· | prompt) at the answer position, (M, V)
        return answer_logps(policies, tokens)[:, 0]

    with torch.no_grad():
        reference_logps = policy_logps()  # the members start as their references
    in_head = {name: name.startswith(HEAD_PARAMETERS) for name in policies.params}
    body = [p for name, p in policies.params.items() if not in_head[name]]
    head_params = [p for name, p in policies.params.items() if in_head[name]]
    if head == "frozen":
        groups = [{"params": body}]
        for p in head_params:
            p.requires_grad_(False)
    elif head == "slow":
        groups = [{"params": body}, {"params": head_params, "lr": SLOW_HEAD * train_cfg.lr}]
    else:
        groups = [{"params": body + head_params}]
    loss_of = lambda _: single_token_dpo_loss(policy_logps(), reference_logps, pos, neg, beta).sum()  # noqa: E731
    fit_full_batch(policies, loss_of, train_cfg, groups)
    with torch.no_grad():
        return reference_logps.double().exp(), policy_logps().double().exp()


def single_prompt_dpo(
    reference: Transformer,
    prompt: torch.Tensor,
    y_pos: int,
    y_neg: int,
    beta: float,
    train_cfg: TrainConfig,
    head: str = "trained",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run of ``single_prompt_dpo_members``: DPO on `prompt` (T,) and the pair (y_pos, y_neg) from
    `reference`. Returns (π_ref(·|x), π_θ(·|x)) over the vocabulary, (V,) each, float64."""
    before, after = single_prompt_dpo_members([reference], prompt[None], [y_pos], [y_neg], beta, train_cfg, head)
    return before[0], after[0]
