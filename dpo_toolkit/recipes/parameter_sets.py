"""Parameter sets that several chapters share: the number-line data of Park §3.2, the SFT-then-DPO
sweep setup and the drifting arm, with the checks between their values."""

from __future__ import annotations

from collections.abc import Mapping

from dpo_toolkit.core.config import OPTIMIZERS, DataConfig
from dpo_toolkit.core.data import make_pairs
from dpo_toolkit.core.parameters import (
    BATCH_SIZE,
    DEVICE,
    EPOCHS,
    EVALS,
    KL_SAMPLES,
    LEARNING_RATE,
    MARGIN_PAIRS,
    RESULTS_ROOT,
    SEEDS,
    check,
    check_evals,
    fail,
    steps,
)
from dpo_toolkit.core.validate import SEED, choice
from dpo_toolkit.recipes.sft_then_dpo import SFT_RECIPES

# ---- the number-line data of Park §3.2, shared by five chapters -------------------------

NUMBER_LINE = {
    "prompt_min": DataConfig.FIELDS["prompt_min"],
    "prompt_max": DataConfig.FIELDS["prompt_min"],  # ≥ prompt_min and fitting the model: number_line_config
    "window": DataConfig.FIELDS["window"],
    "test_fraction": DataConfig.FIELDS["test_fraction"],
    "split_seed": SEED,
}


def largest_prompt(window: int, n_ctx: int) -> int:
    """The largest prompt_max whose longest sequence 'prompt=answer.' fits n_ctx positions
    (−1 if none does). The sequence length only grows where prompt_max or prompt_max + window
    gains a digit, so the answer is 10^k − 1 or 10^k − 1 − window for some k."""
    fits = [
        c
        for k in range(1, n_ctx + 1)
        for c in (10**k - 1, 10**k - 1 - window)
        if c >= 0 and len(str(c)) + len(str(c + window)) + 2 <= n_ctx
    ]
    return max(fits, default=-1)


def number_line_config(values: Mapping[str, object], n_ctx: int = 10):
    """Check the number-line parameters (NUMBER_LINE) and the rules between them, for a
    model with n_ctx positions; return the DataConfig they make."""
    check(NUMBER_LINE, values, every=False)
    prompt_min, prompt_max, window, test_fraction = (values[k] for k in ("prompt_min", "prompt_max", "window", "test_fraction"))
    if prompt_max < prompt_min:
        fail("prompt_max", f"an integer ≥ prompt_min = {prompt_min}", prompt_max)
    cap = largest_prompt(window, n_ctx)
    if prompt_max > cap:
        fail(
            "prompt_max",
            f"≤ {cap}: with window = {window}, the longest sequence 'prompt=answer.' must fit the model's {n_ctx} positions",
            prompt_max,
        )
    n_prompts = prompt_max - prompt_min + 1
    if round(n_prompts * test_fraction) < 1 or round(n_prompts * (1 - test_fraction)) < 1:
        fail("test_fraction", f"a share leaving ≥ 1 prompt on each side of the split of {n_prompts} prompts", test_fraction)
    return DataConfig(prompt_min, prompt_max, window, test_fraction, values["split_seed"])


# ---- the KL sweep's set-up (Park §4.2), shared by the KL-sweep, surgery and TPM chapters --

SWEEP_SETUP = {
    "seeds": SEEDS,
    **NUMBER_LINE,
    "sft_epochs": EPOCHS,
    "sft_lr": LEARNING_RATE,
    "dpo_epochs": EPOCHS,
    "dpo_lr": LEARNING_RATE,
    "batch_size": BATCH_SIZE,
    "n_evals": EVALS,
    "kl_samples": KL_SAMPLES,
    "margin_pairs": MARGIN_PAIRS,
    "results_root": RESULTS_ROOT,
    "device": DEVICE,
}


# The drift map's drifting recipe as a second, labelled arm of the KL-sweep, surgery and CHES chapters.
DRIFTING_ARM = {
    "drift_optimizer": choice(*OPTIMIZERS, optional=True),
    "drift_lr": LEARNING_RATE,
    "drift_reference": choice(*SFT_RECIPES),
    "drift_sft_epochs": EPOCHS,
    "drift_epochs": EPOCHS,
}
DRIFTING_RECIPE = {"drift_optimizer": "rmsprop", "drift_lr": 5e-4, "drift_reference": "kl_sweep", "drift_epochs": 30}
"""The drift map's drifting recipe at the paper profile (its update axis, ``drift_map.updates.drifting_cell``):
the first cell of the KL sweep's task at Park's full data, outside a collapse regime, whose held-out
accuracy ends ≥ 0.7 and whose OOD rate's interval over 10 seeds is clear above 50 % — RMSprop 5e-4,
batch 16, 30 epochs (7,560 updates) from §4.2's SFT reference. The paper profiles of the three chapters
use it (tests/test_parameters.py checks them); the quick profile runs it for fewer epochs."""


def check_sweep_setup(values: Mapping[str, object], n_ctx: int = 10) -> None:
    """Check the SWEEP_SETUP parameters and the rules between them: the data fit the model,
    and the DPO evaluations do not outnumber the DPO optimizer steps."""
    check(SWEEP_SETUP, values, every=False)
    train, _ = make_pairs(number_line_config(values, n_ctx))
    total = steps(len(train), values["batch_size"], values["dpo_epochs"])
    in_words = f"DPO ({values['dpo_epochs']} epochs of {len(train)} training pairs in batches of {values['batch_size']})"
    check_evals("n_evals", values["n_evals"], total, in_words)
