"""The trained number-line policies of the mixture-TPM chapter: their exact unaligned mass
(responses outside the window) at every checkpoint and at several sampling temperatures,
against the SFT reference's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dpo_toolkit.core.exact import masses_at_checkpoints


def temperature_masses(
    dpo: pd.DataFrame, model_cfg, prompts: np.ndarray, window: int, temperatures: Sequence[float], device: str = "cpu"
) -> pd.DataFrame:
    """Exact unaligned mass of the reference (step 0) and of the last checkpoint of every
    (seed, β) run of dpo (rows of ``run_sft_then_dpo`` with kept weights), at every
    temperature. Columns: seed, beta, checkpoint ('reference' | 'last'), step, temperature,
    prompt, log_unaligned. The models are evaluated on `device`."""
    rows = []
    for (seed, beta), run in dpo.groupby(["seed", "beta"]):
        run = run.sort_values("step")
        for checkpoint, row in (("reference", run.iloc[0]), ("last", run.iloc[-1])):
            for temperature in temperatures:
                m = masses_at_checkpoints([row["weights"]], [int(row["step"])], model_cfg, prompts, window, temperature, device)
                rows.append(m.assign(seed=seed, beta=beta, checkpoint=checkpoint, temperature=temperature))
    return pd.concat(rows, ignore_index=True)


def heat_table(temperatures: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, β) run, from ``temperature_masses``: mean unaligned mass over prompts of the
    reference and the last checkpoint at T = 1 and at the hottest T, and
    kept = last(1) / reference(1) (what DPO leaves of the reference's mass),
    heat_back = last(T_hot) / reference(1) (what heat brings back, against the reference),
    relative = [last(T_hot) / last(1)] / [reference(T_hot) / reference(1)] (how much more heat
    amplifies the trained policy than the reference at the same temperatures)."""
    if not np.isclose(temperatures["temperature"], 1.0).any():
        raise ValueError("mixture_claims: temperatures must include T = 1, the baseline of the amplification")
    hottest = temperatures["temperature"].max()
    mean = (
        temperatures.assign(mass=np.exp(temperatures["log_unaligned"]))
        .groupby(["seed", "beta", "checkpoint", "temperature"])["mass"]
        .mean()
        .unstack(["checkpoint", "temperature"])
    )
    table = pd.DataFrame(
        {
            "reference_1": mean[("reference", 1.0)],
            "reference_hot": mean[("reference", hottest)],
            "last_1": mean[("last", 1.0)],
            "last_hot": mean[("last", hottest)],
        }
    )
    table["kept"] = table["last_1"] / table["reference_1"]
    table["heat_back"] = table["last_hot"] / table["reference_1"]
    table["relative"] = (table["last_hot"] / table["last_1"]) / (table["reference_hot"] / table["reference_1"])
    return table.reset_index().assign(hottest=hottest)


def mass_summary(masses: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, beta, step): the mean unaligned mass over prompts and log10 of the smallest."""
    return (
        masses.assign(mass=np.exp(masses["log_unaligned"]), log10=masses["log_unaligned"] / np.log(10))
        .groupby(["seed", "beta", "step"], as_index=False)
        .agg(mean_mass=("mass", "mean"), min_log10_mass=("log10", "min"))
    )
