"""The mixture-TPM chapter's notebook parameters (notebooks/mixture_tpm.md) and the rules between them."""

from __future__ import annotations

import numpy as np

from dpo_toolkit.core.parameters import BETAS, check, fail
from dpo_toolkit.core.validate import SEED, integer, reals
from dpo_toolkit.recipes.parameter_sets import SWEEP_SETUP, check_sweep_setup

# The notebook's `parameters` cell, one spec per variable (notebooks/mixture_tpm.md).
PARAMETERS = {
    "n_instances": integer(1, 30_000),  # paper profile: 3000
    "n_outputs": integer(2, 60),  # default: 6
    "n_theory_betas": integer(1, 250),  # default: 25
    "theory_seed": SEED,
    "betas": BETAS,
    **SWEEP_SETUP,
    "temperatures": reals(0, open_low=True),
}


def check_parameters(values) -> None:
    """Check the mixture-TPM notebook's parameters (PARAMETERS) and the rules between them."""
    check(PARAMETERS, values)
    if not any(np.isclose(t, 1.0) for t in values["temperatures"]):
        fail("temperatures", "a list of numbers > 0 that includes 1.0 (the policy as trained)", values["temperatures"])
    check_sweep_setup(values)
