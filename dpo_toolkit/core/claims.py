"""Claims tables: every chapter ends with one and writes it to
``_build/results/<notebook-stem>/claims.csv``
(claim_id,statement,paper_value,our_value,verdict,precondition).

The verdict vocabulary: a claim whose precondition holds in this run is *tested* and is
``reproduced``, ``partly`` (the part carrying the published effect was seen) or ``not
reproduced``; a claim whose precondition, measured by code, fails is ``untestable here``; a
check of an identity or of the numerics is ``verified (identity)``, never a reproduction."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

COLUMNS = ["claim_id", "statement", "paper_value", "our_value", "verdict", "precondition"]
REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
UNTESTABLE, IDENTITY = "untestable here", "verified (identity)"
TESTED = (REPRODUCED, PARTLY, NOT_REPRODUCED)
VERDICTS = (*TESTED, UNTESTABLE, IDENTITY)
HEADERS = {
    "claim_id": "claim",
    "statement": "statement",
    "paper_value": "paper",
    "our_value": "ours",
    "verdict": "verdict",
    "precondition": "precondition",
}
NO_PRECONDITION = "none"


def verdict(full: bool, part: bool = False, testable: bool = True) -> str:
    """The one verdict ladder every chapter uses: ``untestable here`` when the claim's
    precondition does not hold (testable False); else ``reproduced`` when the full claim
    holds, ``partly`` when the part that carries the published effect holds, ``not
    reproduced`` otherwise."""
    if not testable:
        return UNTESTABLE
    return REPRODUCED if full else PARTLY if part else NOT_REPRODUCED


def identity(holds: bool) -> str:
    """The verdict of a check of an identity or of the numerics (a lemma, a bound that
    holds by algebra): ``verified (identity)`` when it holds, ``not reproduced`` when not."""
    return IDENTITY if holds else NOT_REPRODUCED


def claims_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    """A validated claims table: exactly COLUMNS, unique ids, verdicts from VERDICTS. A row
    without a precondition gets NO_PRECONDITION."""
    df = pd.DataFrame([{"precondition": NO_PRECONDITION, **row} for row in rows], columns=COLUMNS)
    _validate(df, "claims table")
    return df


def with_arm(claims: pd.DataFrame, arm: pd.DataFrame, suffix: str, label: str) -> pd.DataFrame:
    """`claims` followed by the claims `arm` decided on a second, labelled arm of the same chapter:
    their ids get `suffix` ('C4' → 'C4-drift') and their statements start with '[label] '."""
    labelled = arm.assign(claim_id=arm["claim_id"] + suffix, statement=f"[{label}] " + arm["statement"])
    return claims_frame([*claims.to_dict("records"), *labelled.to_dict("records")])


def _validate(df: pd.DataFrame, where: str) -> None:
    if list(df.columns) != COLUMNS:
        raise ValueError(f"{where}: columns must be {COLUMNS}, got {list(df.columns)}")
    if df["claim_id"].duplicated().any():
        raise ValueError(f"{where}: duplicate claim_id {sorted(df.loc[df['claim_id'].duplicated(), 'claim_id'])}")
    bad = sorted(set(df["verdict"]) - set(VERDICTS))
    if bad:
        raise ValueError(f"{where}: verdict must be one of {VERDICTS}, got {bad}")


class ClaimsTable:
    """A claims table as a chapter shows it: every cell in full (pandas would cut cells at 50
    characters), one row per claim, no positional index. Plain text lists one claim per block."""

    def __init__(self, df: pd.DataFrame):
        _validate(df, "claims table")
        self.df = df

    def _repr_html_(self) -> str:
        return self.df.rename(columns=HEADERS).to_html(index=False, border=0, classes="claims-table")

    def __repr__(self) -> str:
        return "\n".join(
            f"{r.claim_id} [{r.verdict}] {r.statement}\n  paper: {r.paper_value}\n  ours:  {r.our_value}"
            for r in self.df.itertuples()
        )


def results_dir(stem: str, root: str | Path | None = None) -> Path:
    """``<root>/<stem>``, created; root defaults to $DPO_RESULTS_ROOT, else ``_build/results``
    at the repository top when the toolkit runs from a checkout (found from this package's
    location), else in the working directory (a pip-installed toolkit, as on Colab)."""
    if root is None:
        checkout = Path(__file__).resolve().parents[2]  # dpo_toolkit/core/claims.py → the repository top
        top = checkout if (checkout / "pyproject.toml").exists() else Path.cwd()
        root = os.environ.get("DPO_RESULTS_ROOT") or top / "_build" / "results"
    path = Path(root) / stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_cache(root: str | Path | None = None) -> Path:
    """``<root>/runs`` (root as in ``results_dir``), created: the cache of training runs that every
    chapter shares. A run's files are named by a hash of everything it depends on (``runner.RunKey``),
    so a configuration that several chapters train (the KL sweep's SFT references, for one) is
    trained once, and a chapter asking for a run another is training waits for it."""
    return results_dir("runs", root)


def write_claims(df: pd.DataFrame, directory: str | Path) -> Path:
    """Write ``claims.csv`` into directory after validating it; returns the path."""
    _validate(df, "claims table")
    path = Path(directory) / "claims.csv"
    df.to_csv(path, index=False)
    return path


def read_claims(path: str | Path) -> pd.DataFrame:
    """Read and validate a claims.csv; a malformed file raises ValueError naming the file."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    _validate(df, str(path))
    return df
