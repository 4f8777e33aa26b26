"""What counts as drifting out of distribution, one rule for the whole book.

A run *drifts* when its greedy OOD rate on the test prompts is ≥ DRIFT_OOD and at least
DRIFT_RISE above its reference's: the thresholds of the grokking chapter's C2 (50 %,
10 points). The drift map applies it to each run's last checkpoint; the CHES chapter's C21
to the seed-mean of its all-pairs runs, as the precondition that there is drift to reduce.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DRIFT_OOD = 0.5  # a run has drifted when its greedy OOD rate is ≥ 50 % …
DRIFT_RISE = 0.1  # … and ≥ 10 points above its reference's


def drifted(ood: np.ndarray | pd.Series | float, reference_ood: np.ndarray | pd.Series | float) -> np.ndarray:
    """Whether each run drifted: OOD rate ≥ DRIFT_OOD and ≥ DRIFT_RISE above its reference's."""
    ood, reference_ood = np.asarray(ood, dtype=float), np.asarray(reference_ood, dtype=float)
    return (ood >= DRIFT_OOD) & (ood - reference_ood >= DRIFT_RISE - 1e-12)
