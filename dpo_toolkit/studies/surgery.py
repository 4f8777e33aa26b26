"""Model surgery (Park §3.4, §4.3): replace chosen parameter groups of one model with a
donor's, then measure what the transplant changes.

Groups are those of ``model.PARAM_GROUPS``; "attention" is every parameter of the
multi-head attention module, projections and biases included (Park footnote 3).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpo_toolkit.core.claims import ClaimText, claims_frame, decide
from dpo_toolkit.core.config import DataConfig, DPOConfig, EvalConfig, ModelConfig, TrainConfig
from dpo_toolkit.core.data import VOCAB, make_pairs
from dpo_toolkit.core.ensemble import Ensemble, model_device
from dpo_toolkit.core.evaluate import Evaluator
from dpo_toolkit.core.evidence import Check, conjunction, mean_interval
from dpo_toolkit.core.generate import greedy_answers, greedy_sequences
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
KL_GAP = 2.0  # C7: KL of the smallest β over the largest, at matched WeightDelta
TAMED = 0.5  # C8: a surgery tames A when KL(A') ≤ TAMED · KL(A)
SMALL_SHARE = 0.35  # C9: the paper's "only ever 25 %", with room for noise
A_OOD = 0.05
B_OOD = 0.15  # C8: B stays in distribution, ≤ 15 % OOD at its last checkpoint (the donor of "in-distribution" attention)
"""C8's precondition: there is OOD behaviour to tame, i.e. A answers OOD on at least this
share of the test prompts at its last checkpoint (one prompt in twenty)."""
PAPER_ATTENTION_SHARE = 0.25


def matched_kl_ratio(low: pd.DataFrame, high: pd.DataFrame, n_points: int = 10) -> float:
    """Median over n_points WeightDelta values in the range both runs cover of
    KL_low(WD) / KL_high(WD), each interpolated linearly in WD along its run's checkpoints
    (step > 0, sorted by WD). NaN when the ranges do not overlap."""
    low, high = (d[d["step"] > 0].sort_values("weight_delta") for d in (low, high))
    lo = max(low["weight_delta"].min(), high["weight_delta"].min())
    hi = min(low["weight_delta"].max(), high["weight_delta"].max())
    if not lo < hi:
        return float("nan")
    grid = np.linspace(lo, hi, n_points)
    kl_low = np.interp(grid, low["weight_delta"], low["kl"])
    kl_high = np.interp(grid, high["weight_delta"], high["kl"])
    return float(np.median(kl_low / kl_high))


# The static text of every claim (what it says, what the paper reports), by claim id.
CLAIMS = {
    "C7": ClaimText(
        "Equal weight deltas give different KL at different β.", "same WeightDelta, different KL across β", "Fig. 3 right"
    ),
    "C8": ClaimText(
        "Swapping in B's attention weights tames A's KL and OOD; swapping the rest does not.",
        "attention swap: KL grows slowly, OOD dips; non-attention swap: KL explodes, OOD barely moves",
    ),
    "C9": ClaimText(
        "Attention receives about 25 % of the weight change while holding about 65 % of the parameters.",
        f"{PAPER_ATTENTION_SHARE:.0%} of the change; attention holds 65K of 104K parameters",
    ),
}


def _pm(s: pd.Series, fmt: str = ".2f") -> str:
    """Mean ± sd over seeds (the value alone for one seed)."""
    return f"{s.mean():{fmt}} ± {s.std(ddof=1):.2f}" if s.count() > 1 else f"{s.mean():{fmt}}"


def _c7_row(sweep: pd.DataFrame, seeds: str) -> dict:
    """C7's row fields: KL of the smallest β over the largest at matched WeightDelta, per seed;
    its precondition is that every seed's two runs share a WeightDelta range."""
    beta_low, beta_high = sweep["beta"].min(), sweep["beta"].max()
    ratios = pd.Series(
        {seed: matched_kl_ratio(g[g["beta"] == beta_low], g[g["beta"] == beta_high]) for seed, g in sweep.groupby("seed")}
    )
    matched = bool(ratios.notna().all())
    # The old partly ("in some seeds, or on average") was a weaker reading of the same threshold, not a
    # part of the claim: on intervals it is what `inconclusive` says, so C7 has no part.
    return {
        "our_value": f"KL(β={beta_low:g}) / KL(β={beta_high:g}) at matched WeightDelta (median over the shared "
        f"WeightDelta range), mean ± sd over {seeds}: {_pm(ratios)}",
        **decide(Check("KL(β low)/KL(β high) at matched WeightDelta", mean_interval(ratios), KL_GAP), precondition=matched),
        "precondition": f"the two β's runs share a WeightDelta range in every seed: {int(ratios.notna().sum())} of {len(ratios)}",
    }


def _c8_precondition(sweep: pd.DataFrame, a_ood_seed: pd.Series) -> tuple[Check, str]:
    """C8's precondition (A goes OOD, B does not, at their last checkpoints; per seed) and its text.
    Two thresholds, one precondition: the check that decides their conjunction (the first that
    fails, else the first undecided, else one that holds)."""
    last = sweep[sweep["step"] == sweep["step"].max()]
    b_ood_seed = last[np.isclose(last["beta"], sweep["beta"].max())].groupby("seed")["ood_rate"].mean()
    a_ood, b_ood = float(a_ood_seed.mean()), float(b_ood_seed.mean())
    _, check = conjunction(
        [
            Check("OOD rate of A at its last checkpoint", mean_interval(a_ood_seed), A_OOD),
            Check("OOD rate of B at its last checkpoint", mean_interval(b_ood_seed), B_OOD, above=False),
        ]
    )
    text = (
        f"at their last checkpoints A answers OOD on ≥ {A_OOD:.0%} of test prompts and B on "
        f"≤ {B_OOD:.0%} (means over seeds, read on their intervals): A {a_ood:.1%}, B {b_ood:.1%}"
    )
    return check, text


def _c8_row(sweep: pd.DataFrame, curves: pd.DataFrame, seeds: str) -> dict:
    """C8's row fields: at A's last checkpoint, per seed, swapping in B's attention tames A's KL
    and OOD (the part carrying the effect) and swapping the rest does not."""
    final = curves[curves["step"] == curves["step"].max()].pivot_table(index="seed", columns="variant", values=["kl", "ood_rate"])
    kl_ratio = {v: final["kl"][v] / final["kl"]["A"] for v in SURGERIES}  # per seed
    ood_change = {v: final["ood_rate"][v] - final["ood_rate"]["A"] for v in SURGERIES}
    attention_tames = [
        Check("KL(A')/KL(A), attention swapped", mean_interval(kl_ratio["attention"]), TAMED, above=False),
        Check("OOD(A') − OOD(A), attention swapped", mean_interval(ood_change["attention"]), 0.0, above=False),
    ]
    rest_does_not = Check("KL(A')/KL(A), rest swapped", mean_interval(kl_ratio["non-attention"]), TAMED)
    a_ood_seed = final["ood_rate"]["A"]
    precondition, precondition_text = _c8_precondition(sweep, a_ood_seed)
    return {
        "our_value": f"at A's last checkpoint, mean ± sd over {seeds}: KL(A')/KL(A) = "
        f"{_pm(kl_ratio['attention'])} (attention swapped) vs {_pm(kl_ratio['non-attention'])} (rest swapped); "
        f"OOD(A') − OOD(A) = {_pm(ood_change['attention'], '+.2f')} vs {_pm(ood_change['non-attention'], '+.2f')}; "
        f"OOD(A) = {_pm(a_ood_seed)}",
        **decide([*attention_tames, rest_does_not], part=attention_tames, precondition=precondition),
        "precondition": precondition_text,
    }


def _c9_row(curves: pd.DataFrame, param_counts: dict[str, int], seeds: str) -> dict:
    """C9's row fields: the paper's "only ever 25 %" as the largest attention share of a step's
    change, once per seed (the old rule took the largest over every seed at once, a pooled statistic
    that grows with the number of seeds); the median share is the part."""
    param_share = param_counts["attention"] / sum(param_counts.values())
    a = curves[curves["variant"] == "A"]
    share = a.groupby("seed")["attention_share_step"].median()
    share_max_seed = a.groupby("seed")["attention_share_step"].max()
    share_max = a["attention_share_step"].max()
    return {
        "our_value": f"attention share of A's change between checkpoints, mean ± sd over {seeds}: largest "
        f"{_pm(share_max_seed)}, median {_pm(share)} (largest over every seed {share_max:.2f}); "
        f"attention holds {param_share:.1%} of the parameters",
        **decide(
            Check("largest attention share of a step's change", mean_interval(share_max_seed), SMALL_SHARE, above=False),
            part=Check("median attention share of a step's change", mean_interval(share), SMALL_SHARE, above=False),
        ),
    }


def surgery_claims(sweep: pd.DataFrame, curves: pd.DataFrame, param_counts: dict[str, int]) -> pd.DataFrame:
    """The C7–C9 claims table.

    sweep: DPO rows of ``run_sft_then_dpo`` over the β grid (with weight_delta and kl);
    curves: ``surgery_curves`` of each seed with a `seed` column; param_counts:
    ``group_param_counts`` of the model. Every deciding quantity is computed once per seed (a
    seed is one replicate: its reference, initialisation and data order; A and B of one seed
    share them) and read as the 95 % interval of its mean over seeds (``core.evidence``).
    """
    n_seeds = curves["seed"].nunique()
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    rows = {"C7": _c7_row(sweep, seeds), "C8": _c8_row(sweep, curves, seeds), "C9": _c9_row(curves, param_counts, seeds)}
    return claims_frame([{"claim_id": c, **rows[c]} for c in CLAIMS], text=CLAIMS)
