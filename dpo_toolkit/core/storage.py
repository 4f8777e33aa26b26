"""Writing results so that an interrupted write never looks like a finished run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write df to path (no index) through a temporary file renamed into place: atomic."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def save_torch(obj: object, path: Path) -> None:
    """``torch.save`` obj to path through a temporary file renamed into place: atomic."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
