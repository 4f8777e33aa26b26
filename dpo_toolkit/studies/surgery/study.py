"""Model surgery (Park §3.4, §4.3): the chapter's parameters, replacing chosen parameter groups of one
model with a donor's (``transplant``), and the curves of what the transplant changes.

Groups are those of ``model.PARAM_GROUPS``; "attention" is every parameter of the
multi-head attention module, projections and biases included (Park footnote 3).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.ensemble import Ensemble, model_device
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.metrics import group_weight_deltas
from dpo_toolkit.core.model import PARAM_GROUPS, Transformer, load_model, param_group
from dpo_toolkit.core.parameters import BETA, check, fail
from dpo_toolkit.core.validate import integer
from dpo_toolkit.recipes.parameter_sets import DRIFTING_ARM, SWEEP_SETUP, check_sweep_setup
from dpo_toolkit.recipes.sft_then_dpo import run_sft_then_dpo, sft_reference

# The notebook's `parameters` cell, one spec per variable (notebooks/surgery.md).
PARAMETERS = {"beta_a": BETA, "beta_b": BETA, "n_betas": integer(2, 100), **SWEEP_SETUP, **DRIFTING_ARM}  # n_betas: paper 10


def check_parameters(values) -> None:
    """Check the surgery notebook's parameters (PARAMETERS) and the rules between them:
    policy A is the lower β, policy B the higher one."""
    check(PARAMETERS, values)
    if values["beta_b"] <= values["beta_a"]:
        fail("beta_b", f"> beta_a = {values['beta_a']} (B is the policy that stays in distribution)", values["beta_b"])
    check_sweep_setup(values)


NON_ATTENTION = tuple(g for g in PARAM_GROUPS if g != "attention")

# The two surgeries of Park Fig. 4: A with B's attention, and A with every other group of B.
SURGERIES: dict[str, tuple[str, ...]] = {"attention": ("attention",), "non-attention": NON_ATTENTION}


def transplant(model: Transformer, donor: Transformer, groups: Iterable[str]) -> Transformer:
    """A new model: `model`'s weights, with every parameter in `groups` copied from `donor`.

    Neither input is modified. Swapping every group gives a copy of the donor; swapping
    none gives a copy of the model.
    """
    groups = set(groups)
    unknown = groups - set(PARAM_GROUPS)
    if unknown:
        raise ValueError(f"groups must be drawn from {list(PARAM_GROUPS)}, got unknown {sorted(unknown)}")
    if model.cfg != donor.cfg:
        raise ValueError(f"surgery needs two models of one architecture, got {model.cfg} and {donor.cfg}")
    patient = copy.deepcopy(model)
    donor_params = dict(donor.named_parameters())
    with torch.no_grad():
        for name, p in patient.named_parameters():
            if param_group(name) in groups:
                p.copy_(donor_params[name])
    return patient


def surgery_curves(
    policy_paths: Sequence[str],
    donor_paths: Sequence[str],
    steps: Sequence[int],
    reference: Transformer,
    evaluator: Evaluator,
    beta: float,
) -> pd.DataFrame:
    """OOD, KL and the other Evaluator metrics of A, of A with B's attention, and of A with
    B's non-attention weights, at every checkpoint (Park Figs. 4–5).

    policy_paths[k] and donor_paths[k] hold A and B after steps[k] DPO steps (B at the
    same step as A). All 3·K models are evaluated as one ensemble; accuracy and margin
    use `beta`, A's (the β of the run whose weights are operated on). Also returns, per checkpoint of A, its weight deltas
    (``checkpoint_deltas``). Returns one row per checkpoint and variant ('A', 'attention',
    'non-attention').
    """
    if not len(policy_paths) == len(donor_paths) == len(steps):
        raise ValueError("surgery_curves needs one policy path and one donor path per step")
    device = model_device(reference)  # every checkpoint is loaded beside the reference
    policies = [load_model(p, reference.cfg, device) for p in policy_paths]
    donors = [load_model(p, reference.cfg, device) for p in donor_paths]
    variants = {"A": policies}
    for name, groups in SURGERIES.items():
        variants[name] = [transplant(a, b, groups) for a, b in zip(policies, donors, strict=True)]
    models = [m for group in variants.values() for m in group]
    metrics = evaluator(Ensemble(models), betas=beta)
    rows = []
    for v, name in enumerate(variants):
        for k, step in enumerate(steps):
            rows.append({"variant": name, "step": step, **metrics[v * len(steps) + k]})
    return pd.DataFrame(rows).merge(checkpoint_deltas(policies, steps, reference), on="step", how="left")


def checkpoint_deltas(policies: Sequence[Transformer], steps: Sequence[int], reference: Transformer) -> pd.DataFrame:
    """Per checkpoint of A (policies[k] after steps[k] steps): the WeightDelta from the reference,
    its attention share, and the attention share of the change since the previous checkpoint
    (FracWeightDelta, Park Eq. 8; NaN at the first)."""
    reference_params = dict(reference.named_parameters())
    stacked = Ensemble(policies).params  # (K, *shape) each
    from_reference = {g: d.cpu() for g, d in group_weight_deltas(stacked, reference_params).items()}  # {group: (K,)}
    step_change = {g: torch.full((len(steps),), float("nan"), dtype=torch.float64) for g in PARAM_GROUPS}
    for k in range(1, len(steps)):
        for g, d in group_weight_deltas(dict(policies[k].named_parameters()), dict(policies[k - 1].named_parameters())).items():
            step_change[g][k] = float(d)
    total_from_reference = sum(from_reference.values())
    total_step = sum(step_change.values())
    return pd.DataFrame(
        {
            "step": list(steps),
            "weight_delta": total_from_reference.numpy(),
            "attention_share_from_reference": (from_reference["attention"] / total_from_reference).numpy(),
            "attention_share_step": (step_change["attention"] / total_step).numpy(),
        }
    )


def surgery_study(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    sft_cfg: TrainConfig,
    dpo_cfg: DPOConfig,
    eval_cfg: EvalConfig,
    betas: list[float],
    seeds: list[int],
    beta_a: float,
    beta_b: float,
    cache_dir: Path,
    device: str | torch.device = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Park §4.3 on one recipe: SFT then DPO at every β (``run_sft_then_dpo``, keeping the weights of
    A = beta_a and B = beta_b at every checkpoint), then ``surgery_curves`` of every seed.
    Returns the DPO rows of the sweep and the surgery curves (with a `seed` column)."""
    runs = run_sft_then_dpo(data_cfg, model_cfg, sft_cfg, dpo_cfg, eval_cfg, betas=betas, seeds=seeds, cache_dir=cache_dir,
                            keep_betas=[beta_a, beta_b], device=device)  # fmt: skip
    sweep = runs[runs["phase"] == "dpo"]
    _, test = make_pairs(data_cfg)
    frames = []
    for seed in seeds:
        reference, _ = sft_reference(data_cfg, model_cfg, sft_cfg, eval_cfg, seed, cache_dir, device=device)
        runs_a = sweep[(sweep["seed"] == seed) & np.isclose(sweep["beta"], beta_a)].sort_values("step")
        runs_b = sweep[(sweep["seed"] == seed) & np.isclose(sweep["beta"], beta_b)].sort_values("step")
        evaluator = Evaluator(test, data_cfg, eval_cfg, reference=reference)
        curves = surgery_curves(runs_a["weights"].tolist(), runs_b["weights"].tolist(), runs_a["step"].tolist(),
                                reference, evaluator, beta_a)  # fmt: skip
        frames.append(curves.assign(seed=seed))
    return sweep, pd.concat(frames, ignore_index=True)
