"""The CHES chapter's notebook parameters (notebooks/ches.md) and the rules between them."""

from __future__ import annotations

from dpo_toolkit.core import parameters as p
from dpo_toolkit.core import validate as v
from dpo_toolkit.recipes import parameter_sets as sets

# The notebook's `parameters` cell, one spec per variable (notebooks/ches.md).
PARAMETERS = {
    "seeds": p.SEEDS,
    **sets.NUMBER_LINE,
    "sft_epochs": p.EPOCHS,
    "sft_lr": p.LEARNING_RATE,
    "batch_size": p.BATCH_SIZE,
    "n_pairs": v.integer(1),
    "pair_seed": v.SEED,
    "beta": p.BETA,
    "dpo_steps": p.STEPS,
    "dpo_lr": p.LEARNING_RATE,
    "sgd_lr": p.LEARNING_RATE,
    "mitigation_beta": p.BETA,
    "mitigation_epochs": p.EPOCHS,
    "mitigation_lr": p.LEARNING_RATE,
    "mitigation_evals": p.EVALS,
    "kl_samples": p.KL_SAMPLES,
    "drop_fractions": v.reals(0, 1, open_low=True, open_high=True),
    "sft_weights": v.reals(0, open_low=True),
    "sgd_mitigation_steps": p.STEPS,
    "grokking_beta": p.BETA,
    "grokking_dpo_epochs": p.EPOCHS,
    **sets.DRIFTING_ARM,
    "phrase_statements": v.integer(6, 480),  # paper profile: 48
    "phrase_lead_weight": v.real(0, 1, open_low=True, open_high=True),
    "phrase_sft_steps": p.STEPS,
    "phrase_subset_fraction": v.real(0, 1 / 3, open_low=True),
    "phrase_mitigation_steps": p.STEPS,
    "safety_refusal_share": v.real(0, 1, open_low=True, open_high=True),
    "safety_both_refusal_share": v.real(0, 1),
    "safety_sft_steps": p.STEPS,
    "safety_beta": p.BETA,
    "safety_lr": p.LEARNING_RATE,
    "safety_epochs": p.EPOCHS,
    "safety_seeds": p.SEEDS,
    "results_root": p.RESULTS_ROOT,
    "device": p.DEVICE,
}
SAFETY_EVALS = 20  # evaluations over the toy safety task's DPO run
SAFETY_BATCH = 16  # its DPO batch size


def check_parameters(values) -> None:
    """Check the CHES notebook's parameters (PARAMETERS) and the rules between them: n_pairs
    fits the training pairs, and no run has more evaluations than optimizer steps."""
    from dpo_toolkit.core.data import make_pairs
    from dpo_toolkit.studies.ches.safety import SafetyConfig, preference_pairs, prompts

    p.check(PARAMETERS, values)
    train, _ = make_pairs(sets.number_line_config(values))
    if values["n_pairs"] > len(train):
        p.fail("n_pairs", f"≤ {len(train)}, the training pairs", values["n_pairs"])
    total = p.steps(len(train), values["batch_size"], values["mitigation_epochs"])
    in_words = f"C12's DPO ({values['mitigation_epochs']} epochs of {len(train)} pairs in batches of {values['batch_size']})"
    p.check_evals("mitigation_evals", values["mitigation_evals"], total, in_words)
    n_phrase_pairs = 11 * values["phrase_statements"]  # every statement: its lead phrase against the 11 others
    if round(values["phrase_subset_fraction"] * n_phrase_pairs) < 1:
        allowed = f"≥ {0.5 / n_phrase_pairs:.3g}, so that each protocol subset of the {n_phrase_pairs} phrase pairs has a pair"
        p.fail("phrase_subset_fraction", allowed, values["phrase_subset_fraction"])
    safety = SafetyConfig(refusal_share=values["safety_refusal_share"], both_refusal_share=values["safety_both_refusal_share"])
    n_safety = len(preference_pairs(safety, prompts(safety)[0])[1])
    if p.steps(n_safety, SAFETY_BATCH, values["safety_epochs"]) < SAFETY_EVALS:
        least = -(-SAFETY_EVALS // p.steps(n_safety, SAFETY_BATCH))
        allowed = f"≥ {least}, so that the toy safety task's {SAFETY_EVALS} evaluations fit its optimizer steps"
        p.fail("safety_epochs", allowed, values["safety_epochs"])
