"""The likelihood-displacement chapter's experiments in the tiny LM: single-prompt DPO runs (the
talk's table), one-step geometry against the unconstrained-features theory, and one step for
every ordered pair of answer tokens; and the notebook's parameters.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dpo_toolkit.core.config import ModelConfig, TrainConfig
from dpo_toolkit.core.device import resolve_device
from dpo_toolkit.core.model import Transformer, build_model
from dpo_toolkit.core.parameters import BETA, DEVICE, LEARNING_RATE, RESULTS_ROOT, SEEDS, STEPS, check, fail
from dpo_toolkit.core.validate import choices, integer, real, reals
from dpo_toolkit.studies.likelihood_displacement.persona import (
    ANSWERS,
    GROUP_OF,
    TABLE_PAIRS,
    PersonaConfig,
    answer_logps,
    persona_corpus,
    train_persona_lms,
)
from dpo_toolkit.studies.likelihood_displacement.single_prompt import HEADS, SLOW_HEAD, single_prompt_dpo_members
from dpo_toolkit.studies.likelihood_displacement.theory import (
    first_order_logp_change,
    first_order_terms,
    projection_rank,
    single_token_dpo_loss,
)


def lm_features(model: Transformer, prompt: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, W, bias) of the LM at the answer position of `prompt`, in float64, rebalanced as
    (h / scale, scale · W): the same logits and π, with ‖W_z‖² / ‖h‖² multiplied by scale⁴."""
    with torch.no_grad():
        hidden, _ = model.hidden(prompt[None])
        return hidden[0, -1].double() / scale, model.unembed.weight.double() * scale, model.unembed.bias.double()


# The notebook's `parameters` cell, one spec per variable (notebooks/likelihood_displacement.md).
PARAMETERS = {
    "n_statements": integer(6, 600),  # default: 60
    "seeds": SEEDS,
    "d_model": integer(4, 640),  # default: 64
    "sft_steps": STEPS,
    "sft_lr": LEARNING_RATE,
    "beta": BETA,
    "dpo_steps": STEPS,
    "dpo_lr": LEARNING_RATE,
    "prompts_per_pair": integer(1),
    "one_step_lr": LEARNING_RATE,
    "n_instances": integer(1, 10_000),  # paper profile: 1000
    "map_lead_weights": reals(0, 1, open_low=True, open_high=True),
    "map_scales": reals(0, open_low=True),
    "map_optimizers": choices("sgd", "rmsprop", "adam"),
    "map_heads": choices(*HEADS),
    "sgd_lr": LEARNING_RATE,
    "rmsprop_lr": LEARNING_RATE,
    "map_statements": integer(1),
    "words_p_ref": real(0, 1, open_low=True, open_high=True),
    "words_margins": reals(0, open_low=True),
    "results_root": RESULTS_ROOT,
    "device": DEVICE,
}


N_HEADS = 4  # heads of the persona LM (PersonaConfig.model_config)


def check_parameters(values) -> None:
    """Check the likelihood-displacement notebook's parameters (PARAMETERS) and the rules between
    them: d_model splits into N_HEADS heads, and y+'s stance has prompts_per_pair statements
    (every row of the talk's table) and map_statements (every pair of the map)."""
    check(PARAMETERS, values)
    if values["d_model"] % N_HEADS:
        fail("d_model", f"a multiple of {N_HEADS} (the persona LM's heads)", values["d_model"])
    _, stances, _ = persona_corpus(PersonaConfig(n_statements=values["n_statements"]))
    available = min(int((stances == GROUP_OF[y_pos]).sum()) for y_pos, _ in TABLE_PAIRS)
    for name in ("prompts_per_pair", "map_statements"):
        if values[name] > available:
            allowed = f"≤ {available}, the statements of each pair's y+ stance among n_statements = {values['n_statements']}"
            fail(name, allowed, values[name])


DISPLACED_BELOW = -0.05
"""A run displaces when log π(y+) falls by ≥ 0.05 nats (π(y+) loses ≥ 4.9 % of itself): far above float
error and the wobble of a run that barely moved (0.9495 → 0.9474 is −0.002), far below the talk's falls
(OLMo's No: 0.85 → 0.01, −4.4)."""
CATASTROPHIC_MASS = 0.05
"""...and is catastrophic when, besides, the answer tokens of another meaning than y+'s (y− aside) gain
≥ 0.05 of probability mass between them: a visible share of the answer, not a rounding error."""


def displacement_row(cfg: PersonaConfig, before: torch.Tensor, after: torch.Tensor, y_pos: str, y_neg: str, top: int = 3) -> dict:
    """One row of the talk's table: π(y+) before and after and the change of log π(y+); the answer
    tokens (other than y+ and y−) whose probability rose most, classed benign (y+'s meaning) or
    catastrophic (another), and the mass gained by tokens of another meaning. The run displaces when
    log π(y+) fell by DISPLACED_BELOW or more, and is catastrophic when it displaces and tokens of
    another meaning gained CATASTROPHIC_MASS or more."""
    change = float(torch.log(after[cfg.token(y_pos)] / before[cfg.token(y_pos)]))
    gains = {t: float(after[cfg.token(t)] - before[cfg.token(t)]) for t in ANSWERS if t not in (y_pos, y_neg)}
    rising = [t for t, g in sorted(gains.items(), key=lambda kv: -kv[1]) if g > 0][:top]
    other_gain = sum(g for t, g in gains.items() if GROUP_OF[t] != GROUP_OF[y_pos])
    displaced = change <= DISPLACED_BELOW
    return {
        "y_pos": y_pos,
        "y_neg": y_neg,
        "p_pos_before": float(before[cfg.token(y_pos)]),
        "p_pos_after": float(after[cfg.token(y_pos)]),
        "dlogp_pos": change,
        "displaced": displaced,
        "benign": ", ".join(t for t in rising if GROUP_OF[t] == GROUP_OF[y_pos]) or "—",
        "catastrophic": ", ".join(t for t in rising if GROUP_OF[t] != GROUP_OF[y_pos]) or "—",
        "other_meaning_gain": other_gain,
        "is_catastrophic": displaced and other_gain >= CATASTROPHIC_MASS,
    }


def theory_row(reference: Transformer, prompt: torch.Tensor, y_pos: int, y_neg: int, beta: float, head: str) -> dict:
    """The theory's variables for a run, at the reference (the unconstrained-features model made of
    the LM's h and W at the answer position): π_ref(y−), ⟨W_y+, W_y−⟩ / ‖W_y+‖², y+'s rank by
    ⟨W_z, W_y+ − W_y−⟩, the two first-order terms of the change of log π(y+) per unit step, and the
    prediction for this head: both terms when it is trained, the h-term alone when W is frozen, the
    W-term at SLOW_HEAD of its size when the head is slow."""
    h, W, b = lm_features(reference, prompt)
    reference_logps = (W @ h + b).log_softmax(-1)
    from_W, from_h = first_order_terms(h, W, reference_logps, y_pos, y_neg, beta, bias=b)
    predicted = from_h + {"trained": 1.0, "frozen": 0.0, "slow": SLOW_HEAD}[head] * from_W
    return {
        "p_neg_before": float(reference_logps[y_neg].exp()),
        "inner_ratio": float(W[y_pos] @ W[y_neg] / (W[y_pos] @ W[y_pos])),
        "rank_pos": projection_rank(W, y_pos, y_neg),
        "change_from_W": from_W,
        "change_from_h": from_h,
        "predicted": predicted,
    }


def one_step_geometry(model: Transformer, prompt: torch.Tensor, y_pos: int, y_neg: int, beta: float, lr: float) -> pd.DataFrame:
    """One plain gradient step of single-token DPO (from π_ref = the model), in the full LM and in
    the unconstrained-features model built from the LM's own h (last hidden embedding at the
    answer position) and W (unembedding). One row per token z: inner = ⟨W_z, W_y+ − W_y−⟩,
    dlogp_lm and dlogp_features (the change of log π(z) after the step), and dlogp_theory
    (``first_order_logp_change`` × lr)."""
    h, W, b = lm_features(model, prompt)
    # the LM, in float64
    policy = copy.deepcopy(model).double().train().requires_grad_(True)
    with torch.no_grad():
        reference_logps = answer_logps(policy, prompt[None])[0]
    loss = single_token_dpo_loss(answer_logps(policy, prompt[None])[0], reference_logps, y_pos, y_neg, beta)
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    with torch.no_grad():
        for p, g in zip(policy.parameters(), grads, strict=True):
            p.sub_(lr * g)
        dlogp_lm = answer_logps(policy, prompt[None])[0] - reference_logps
    # the unconstrained-features model (bias fixed)
    features_reference = (W @ h + b).log_softmax(-1)
    h_var, W_var = h.clone().requires_grad_(True), W.clone().requires_grad_(True)
    loss = single_token_dpo_loss((W_var @ h_var + b).log_softmax(-1), features_reference, y_pos, y_neg, beta)
    grad_h, grad_W = torch.autograd.grad(loss, [h_var, W_var])
    with torch.no_grad():
        dlogp_features = ((W - lr * grad_W) @ (h - lr * grad_h) + b).log_softmax(-1) - features_reference
        theory = lr * first_order_logp_change(h, W, features_reference, y_pos, y_neg, beta, bias=b)
    return pd.DataFrame(
        {
            "z": np.arange(len(W)),
            "inner": (W @ (W[y_pos] - W[y_neg])).cpu().numpy(),
            "dlogp_lm": dlogp_lm.cpu().numpy(),
            "dlogp_features": dlogp_features.cpu().numpy(),
            "dlogp_theory": theory.cpu().numpy(),
        }
    )


def lm_study(
    cfg: PersonaConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: TrainConfig,
    beta: float,
    seeds: list[int],
    prompts_per_pair: int,
    one_step_lr: float,
    device: str | torch.device = "cpu",
) -> tuple[dict[int, np.ndarray], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The tiny-LM experiments, for each seed (one LM per seed, trained and probed on `device`):

    - the cosine similarity of the answer tokens' unembeddings, {seed: (10, 10)};
    - the talk's table: for each pair of TABLE_PAIRS, DPO (dpo_cfg.epochs full steps) on each
      of the first `prompts_per_pair` statements whose stance is y+'s meaning;
    - one-step geometry (``one_step_geometry``) of those runs, for z ∉ {y+, y−};
    - one step for every ordered pair of answer tokens on the first statement of y+'s stance:
      ⟨W_y+, W_y−⟩ and the change of log π(y+).
    """
    device = resolve_device(device)
    prompts, stances, _ = persona_corpus(cfg)
    prompts = prompts.to(device)
    answer_ids = [cfg.token(t) for t in ANSWERS]
    similarity, table, geometry, pairs = {}, [], [], []
    models = [build_model(model_cfg, seed, device) for seed in seeds]
    train_persona_lms([cfg] * len(models), models, sft_cfg)  # every seed's LM a member of one ensemble
    for seed, model in zip(seeds, models, strict=True):
        model.eval().requires_grad_(False)
        W = model.unembed.weight.detach()
        similarity[seed] = cosine_matrix(W, answer_ids)
        for y_pos, y_neg, i, before, after in table_runs(cfg, model, prompts, stances, prompts_per_pair, beta, dpo_cfg):
            table.append({"seed": seed, "statement": i, **displacement_row(cfg, before, after, y_pos, y_neg)})
            step = one_step_geometry(model, prompts[i], cfg.token(y_pos), cfg.token(y_neg), beta, one_step_lr)
            others = step[~step["z"].isin([cfg.token(y_pos), cfg.token(y_neg)])]
            geometry.append(others.assign(seed=seed, statement=i, pair=f"{y_pos}/{y_neg}"))
        for y_pos in ANSWERS:
            i = next(k for k, s in enumerate(stances) if s == GROUP_OF[y_pos])
            for y_neg in ANSWERS:
                if y_neg == y_pos:
                    continue
                step = one_step_geometry(model, prompts[i], cfg.token(y_pos), cfg.token(y_neg), beta, one_step_lr)
                inner = float(W[cfg.token(y_pos)] @ W[cfg.token(y_neg)])
                dlogp_pos = float(step.loc[step["z"] == cfg.token(y_pos), "dlogp_lm"].iloc[0])
                pairs.append({"seed": seed, "y_pos": y_pos, "y_neg": y_neg, "inner_pos_neg": inner, "dlogp_pos": dlogp_pos})
    return similarity, pd.DataFrame(table), pd.concat(geometry, ignore_index=True), pd.DataFrame(pairs)


def table_runs(
    cfg: PersonaConfig, model: Transformer, prompts, stances, prompts_per_pair: int, beta: float, dpo_cfg: TrainConfig
):
    """The talk's table in one LM: for each pair of TABLE_PAIRS, single-prompt DPO on each of the first
    `prompts_per_pair` statements of y+'s stance, every run a member of one ensemble. Yields
    (y+, y−, statement, π_ref, π_θ) per run."""
    runs = [(y_pos, y_neg, i) for y_pos, y_neg in TABLE_PAIRS
            for i in [k for k, s in enumerate(stances) if s == GROUP_OF[y_pos]][:prompts_per_pair]]  # fmt: skip
    positives, negatives = [cfg.token(p) for p, _, _ in runs], [cfg.token(n) for _, n, _ in runs]
    statements = prompts[[i for *_, i in runs]]  # (runs, T)
    before, after = single_prompt_dpo_members([model] * len(runs), statements, positives, negatives, beta, dpo_cfg)
    for run, (y_pos, y_neg, i) in enumerate(runs):
        yield y_pos, y_neg, i, before[run], after[run]


def cosine_matrix(W: torch.Tensor, rows: list[int]) -> np.ndarray:
    """Cosine similarity of the chosen rows of W: (len(rows), len(rows))."""
    unit = F.normalize(W[rows].double(), dim=-1)
    return (unit @ unit.T).cpu().numpy()
