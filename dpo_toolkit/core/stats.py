"""Small statistics shared by the chapters: rank correlation and a stable log-sum-exp."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either input is constant."""
    x, y = pd.Series(np.asarray(x, dtype=float)).rank(), pd.Series(np.asarray(y, dtype=float)).rank()
    return float(x.corr(y)) if x.std() > 0 and y.std() > 0 else float("nan")


def logsumexp(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """log Σ exp(x) along axis, without overflow; −inf entries (zero mass) are allowed."""
    return torch.logsumexp(torch.as_tensor(np.asarray(x, dtype=np.float64)), dim=axis).numpy()
