"""Tables as a reader sees them: column and index names in words instead of variable names
(``chosen_logp_change_mean`` → "chosen log π change (mean)"), and every cell in full (pandas cuts
cells at 50 characters in a notebook). ``use_readable_headers()`` makes every DataFrame a
notebook displays go through ``readable``; the frames themselves, and the CSV files the chapters
write, keep their variable names.
"""

from __future__ import annotations

import re

import pandas as pd

VARIABLE_NAME = re.compile(r"(?<![\w(])[a-z0-9]+(?:_[a-z0-9]+)+(?![\w])", re.ASCII)  # snake_case, not π_ref or W_z
NAMES = {  # whole names the word rule would garble
    "y_pos": "y+",
    "y_neg": "y−",
    "cos_pos_neg": "cos(y+, y−)",
    "p_before": "π before",
    "p_after": "π after",
    "p_pos_before": "π(y+) before",
    "p_pos_after": "π(y+) after",
    "rank_pos": "rank of y+",
    "mass_left_pos": "mass leaving y+",
    "tpm_a_below_alpha": "TPM(A) < α",
}
WORDS = {  # one part of a name → its word
    "kl": "KL",
    "ood": "OOD",
    "sft": "SFT",
    "dpo": "DPO",
    "tpm": "TPM",
    "ches": "CHES",
    "rl": "RL",
    "logp": "log π",
    "mc": "Monte Carlo",
    "pos": "y+",
    "neg": "y−",
    "ref": "reference",
    "lr": "learning rate",
    "log10": "log₁₀",
    "spearman": "Spearman",
}
STATISTICS = {"mean": "mean", "std": "sd", "sd": "sd", "se": "SE", "min": "min", "max": "max", "low": "CI low", "high": "CI high"}


def is_variable_name(text: str) -> bool:
    """Whether the text holds a snake_case variable name (``drift_fraction``), which a reader should not meet."""
    return bool(VARIABLE_NAME.search(text))


def header(name):
    """A column or index name in words; names that are not snake_case (and non-strings) pass unchanged,
    but for an abbreviation alone ("kl" → "KL")."""
    if isinstance(name, str) and name in WORDS:
        return WORDS[name]
    if not isinstance(name, str) or not is_variable_name(name):
        return name
    return VARIABLE_NAME.sub(lambda m: _words(m.group(0)), name)


def _words(name: str) -> str:
    if name in NAMES:
        return NAMES[name]
    parts = name.split("_")
    statistic = STATISTICS.get(parts[-1])
    words = " ".join(WORDS.get(p, p) for p in (parts[:-1] if statistic else parts))
    return f"{words} ({statistic})" if statistic else words


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of the frame whose column labels, index labels' names and column-level names are in words."""
    shown = frame.copy()
    if isinstance(shown.columns, pd.MultiIndex):
        shown.columns = pd.MultiIndex.from_tuples([tuple(header(v) for v in c) for c in shown.columns])
    else:
        shown.columns = [header(c) for c in shown.columns]
    shown.columns.names = [header(n) for n in frame.columns.names]
    shown.index.names = [header(n) for n in frame.index.names]
    return shown


def to_html(frame: pd.DataFrame) -> str:
    """The frame as HTML with readable headers and every cell in full (at most 60 rows shown)."""
    return readable(frame).to_html(max_rows=pd.get_option("display.max_rows"), border=0, classes="dataframe")


class EveryRow:
    """A frame a notebook shows whole, every row included (a map reports every cell): pandas
    otherwise cuts a table longer than ``display.max_rows`` to its ends around a row of "...".
    """

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def _repr_html_(self) -> str:
        return readable(self.frame).to_html(max_rows=None, border=0, classes="dataframe")

    def __repr__(self) -> str:
        return readable(self.frame).to_string(max_rows=None)


def every_row(frame: pd.DataFrame) -> EveryRow:
    """Show ``frame`` with every row, headers in words (``readable``)."""
    return EveryRow(frame)


def use_readable_headers() -> None:
    """Make every DataFrame this IPython session displays show readable headers and full cells
    (``to_html``); nothing outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, to_html)
