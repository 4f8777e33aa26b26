"""Claims tables: every chapter ends with one and writes it to
``_build/results/<notebook-stem>/claims.csv``
(claim_id, statement, paper_value, our_value, verdict, precondition, n, estimate, ci_low, ci_high,
threshold).

The verdict vocabulary: a claim whose precondition holds is *tested* and is ``reproduced``,
``partly`` (the part carrying the published effect was seen) or ``not reproduced``; a claim whose
precondition, measured by code, fails is ``untestable here``; a check of an identity or of the
numerics is ``verified (identity)``, never a reproduction. A claim that reads trained models is
decided on an interval over independent replicates (``core.evidence``): it is ``inconclusive``
when the interval straddles its threshold or rests on fewer than ``MIN_REPLICATES`` replicates.
Its row then carries n, the estimate, its 95 % interval and the threshold it was read against;
those columns are empty for identities and exact computations (``verdict``, ``identity``)."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dpo_toolkit.core.evidence import MIN_REPLICATES, Check, conjunction

EVIDENCE = ["n", "estimate", "ci_low", "ci_high", "threshold"]
COLUMNS = ["claim_id", "statement", "paper_value", "our_value", "verdict", "precondition", *EVIDENCE]
REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
UNTESTABLE, IDENTITY, INCONCLUSIVE = "untestable here", "verified (identity)", "inconclusive"
TESTED = (REPRODUCED, PARTLY, NOT_REPRODUCED)
DECISIVE = TESTED
VERDICTS = (*TESTED, INCONCLUSIVE, UNTESTABLE, IDENTITY)
HEADERS = {
    "claim_id": "claim",
    "statement": "statement",
    "paper_value": "paper",
    "our_value": "ours",
    "verdict": "verdict",
    "precondition": "precondition",
    "n": "n",
    "estimate": "estimate",
    "ci_low": "95 % CI low",
    "ci_high": "95 % CI high",
    "threshold": "threshold",
}
NO_PRECONDITION = "none"
GLYPHS = {  # verdict → a glyph shown beside it, so that no verdict is told by colour alone
    REPRODUCED: "✓",
    PARTLY: "◐",
    NOT_REPRODUCED: "✗",
    INCONCLUSIVE: "?",
    UNTESTABLE: "∅",
    IDENTITY: "≡",
}


@dataclass(frozen=True)
class ClaimText:
    """The static part of a claims-table row: what the claim says and what the paper reports,
    declared once per claim in its chapter's table of claims (``claims_frame(rows, text)``)."""

    statement: str
    paper_value: str
    source: str = ""
    """Where the paper says it (a section, a figure); shown after the paper value."""

    def fields(self) -> dict[str, str]:
        paper = f"{self.paper_value} ({self.source})" if self.source else self.paper_value
        return {"statement": self.statement, "paper_value": paper}


def verdict(full: bool, part: bool = False, testable: bool = True) -> str:
    """The one verdict ladder every chapter uses: ``untestable here`` when the claim's
    precondition does not hold (testable False); else ``reproduced`` when the full claim
    holds, ``partly`` when the part that carries the published effect holds, ``not
    reproduced`` otherwise."""
    if not testable:
        return UNTESTABLE
    return REPRODUCED if full else PARTLY if part else NOT_REPRODUCED


def decide(full: Check | list[Check], part: Check | list[Check] | None = None, precondition: Check | bool = True) -> dict:
    """The verdict of a claim read on trained models, from intervals over replicates.

    `full`: the checks the whole claim needs (all must hold); `part`: those of the part that
    carries the published effect; `precondition`: a check, or a fact fixed by design. The ladder:
    ``inconclusive`` when the deciding interval rests on fewer than MIN_REPLICATES replicates
    (its precondition, measured on the same runs, is not judged either); ``untestable here``
    when the precondition fails (``inconclusive`` when its interval straddles); ``reproduced``
    when every full check holds; ``partly`` when a full check fails and every part check holds;
    ``not reproduced`` when a full check fails and so does a part check (or there is no part);
    ``inconclusive`` whenever the check that would decide straddles its threshold.

    Returns the row's fields: verdict, the deciding check's n, estimate, interval and threshold,
    and `decision`, a sentence for the row (what decided, and for ``inconclusive`` about how many
    replicates would decide it at the observed spread)."""
    full = [full] if isinstance(full, Check) else list(full)
    held, deciding = conjunction(full)
    if isinstance(precondition, Check):
        pre, pre_check = precondition.outcome, precondition
    else:
        pre, pre_check = bool(precondition), None
    if min(c.interval.n for c in full) < MIN_REPLICATES:
        deciding = min(full, key=lambda c: c.interval.n)
        return _decision(INCONCLUSIVE, deciding, f"fewer than {MIN_REPLICATES} replicates decide nothing")
    if pre is False:
        return _decision(UNTESTABLE, pre_check or deciding, "precondition fails")
    if pre is None:
        return _decision(INCONCLUSIVE, pre_check, "the precondition's interval straddles its threshold")
    if held is True:
        return _decision(REPRODUCED, deciding, "every check's interval is clear of its threshold")
    if held is None:
        return _decision(INCONCLUSIVE, deciding, "its interval straddles the threshold")
    if part is None:
        return _decision(NOT_REPRODUCED, deciding, "the interval is clear of the threshold, on the other side")
    part_held, part_deciding = conjunction([part] if isinstance(part, Check) else list(part))
    if part_held is True:
        return _decision(PARTLY, deciding, "the full claim fails; the part carrying the effect holds")
    if part_held is None:
        return _decision(INCONCLUSIVE, part_deciding, "the full claim fails; the part's interval straddles")
    return _decision(NOT_REPRODUCED, part_deciding, "the full claim and its part fail")


def _decision(verdict_: str, check: Check, why: str) -> dict:
    i = check.interval
    sentence = f"{verdict_}: {check.describe()}; {why}"
    if verdict_ == INCONCLUSIVE:
        needed = check.replicates_needed()
        if needed is not None and needed > i.n:
            sentence += f"; about {needed} replicates would decide it at this spread"
    return {
        "verdict": verdict_,
        "n": str(i.n),
        "estimate": f"{i.estimate:.4g}",
        "ci_low": f"{i.low:.4g}",
        "ci_high": f"{i.high:.4g}",
        "threshold": f"{check.threshold:.4g}",
        "decision": sentence,
    }


def identity(holds: bool) -> str:
    """The verdict of a check of an identity or of the numerics (a lemma, a bound that
    holds by algebra): ``verified (identity)`` when it holds, ``not reproduced`` when not."""
    return IDENTITY if holds else NOT_REPRODUCED


def claims_frame(rows: list[dict[str, str]], text: Mapping[str, ClaimText] | None = None) -> pd.DataFrame:
    """A validated claims table: exactly COLUMNS, unique ids, verdicts from VERDICTS. A row's
    statement and paper value come from `text` (its chapter's ClaimText per claim id) unless the
    row has them; a row without a precondition gets NO_PRECONDITION; a row without evidence
    columns (an identity, an exact computation) gets them empty. A row built with
    ``**decide(...)`` carries a `decision` sentence, which is appended to its `our_value`."""
    records = []
    for row in rows:
        static = text[row["claim_id"]].fields() if text and row["claim_id"] in text else {}
        row = {"precondition": NO_PRECONDITION, **dict.fromkeys(EVIDENCE, ""), **static, **row}
        decision = row.pop("decision", None)
        if decision:
            row["our_value"] = f"{row['our_value']}. Decided: {decision}"
        records.append(row)
    df = pd.DataFrame(records, columns=COLUMNS).astype(str)
    _validate(df, "claims table")
    return df


def with_arm(claims: pd.DataFrame, arm: pd.DataFrame, suffix: str, label: str) -> pd.DataFrame:
    """`claims` followed by the claims `arm` decided on a second, labelled arm of the same chapter:
    their ids get `suffix` ('C4' → 'C4-drift') and their statements start with '[label] '."""
    labelled = arm.assign(claim_id=arm["claim_id"] + suffix, statement=f"[{label}] " + arm["statement"])
    return claims_frame([*claims.to_dict("records"), *labelled.to_dict("records")])


def gated(claims: pd.DataFrame, precondition: Check, what: str) -> pd.DataFrame:
    """`claims` under one more precondition shared by every row (an arm's runs do not collapse, say):
    where it fails, each tested or undecided claim becomes ``untestable here``; where it straddles,
    each decisive claim becomes ``inconclusive``; `what` and the check are added to each row's
    precondition. Identities are left alone."""
    outcome, note = precondition.outcome, f"{what}: {precondition.describe()}"
    rows = []
    for row in claims.to_dict("records"):
        if row["verdict"] != IDENTITY:
            before = row["verdict"]
            if outcome is False:
                row["verdict"] = UNTESTABLE
            elif outcome is None and row["verdict"] in DECISIVE:
                row["verdict"] = INCONCLUSIVE
            if row["verdict"] != before:
                why = "fails" if outcome is False else "is undecided"
                row["our_value"] = f"{row['our_value']}. Read as {before} on its own; {row['verdict']}: '{what}' {why}"
            row["precondition"] = note if row["precondition"] == NO_PRECONDITION else f"{row['precondition']}; {note}"
        rows.append(row)
    return claims_frame(rows)


def _validate(df: pd.DataFrame, where: str) -> None:
    if list(df.columns) != COLUMNS:
        raise ValueError(f"{where}: columns must be {COLUMNS}, got {list(df.columns)}")
    if df["claim_id"].duplicated().any():
        raise ValueError(f"{where}: duplicate claim_id {sorted(df.loc[df['claim_id'].duplicated(), 'claim_id'])}")
    bad = sorted(set(df["verdict"]) - set(VERDICTS))
    if bad:
        raise ValueError(f"{where}: verdict must be one of {VERDICTS}, got {bad}")
    for row in df.itertuples():
        if row.n == "" or row.verdict not in DECISIVE:
            continue
        low, high, threshold = float(row.ci_low), float(row.ci_high), float(row.threshold)
        if int(row.n) < MIN_REPLICATES or low < threshold < high:
            raise ValueError(
                f"{where}: {row.claim_id} is '{row.verdict}' but its interval [{row.ci_low}, {row.ci_high}] over "
                f"{row.n} replicates straddles its threshold {row.threshold} or rests on < {MIN_REPLICATES} replicates"
            )


def verdict_digest(df: pd.DataFrame) -> str:
    """What nbval compares of a claims table: one line per claim with its verdict and its number of
    replicates. The numbers read from trained models are not in it: their float order changes
    with the CPU, the thread count and the kernels, while a verdict decided on an interval over
    replicates does not (CONTRIBUTING, "What the stored outputs pin")."""
    _validate(df, "claims table")
    return "\n".join(f"{r.claim_id}: {r.verdict}" + (f" (n={r.n})" if r.n else "") for r in df.itertuples())


def claim_anchor(claim_id: str) -> str:
    return f"claim-{claim_id}"  # the id of the claim's row in its chapter's claims table, its badges' target


class ClaimsTable:
    """A claims table as a chapter shows it: every cell in full (pandas would cut cells at 50
    characters), one row per claim, no positional index. Plain text lists one claim per block."""

    def __init__(self, df: pd.DataFrame):
        _validate(df, "claims table")
        self.df = df

    def _repr_html_(self) -> str:
        shown = self.df.assign(
            verdict=[f"{GLYPHS[v]} {v}" for v in self.df["verdict"]],
            evidence=[_evidence(r) for r in self.df.itertuples()],
        )[["claim_id", "verdict", "statement", "paper_value", "our_value", "evidence", "precondition"]]
        table = shown.rename(columns={**HEADERS, "evidence": "estimate [95 % CI] (n) · threshold"}).to_html(
            index=False, border=0, classes="claims-table"
        )
        head, body = table.split("<tbody>", 1)
        ids = iter(self.df["claim_id"])  # each row its anchor, the target of the claim's verdict badges
        return f"{head}<tbody>" + re.sub("<tr>", lambda _: f'<tr id="{html.escape(claim_anchor(next(ids)))}">', body)

    def __repr__(self) -> str:
        return "\n".join(
            f"{r.claim_id} [{r.verdict}] {r.statement}\n  paper: {r.paper_value}\n  ours:  {r.our_value}"
            + (f"\n  n={r.n}, estimate {r.estimate}, 95 % CI [{r.ci_low}, {r.ci_high}], threshold {r.threshold}" if r.n else "")
            for r in self.df.itertuples()
        )


def _evidence(row) -> str:
    """'0.91 [0.8, 1] (n=3) · 0.9' for a claim decided on replicates; 'exact' for an exact one."""
    if not row.n:
        return "exact"
    return (
        f"{float(row.estimate):.3g} [{float(row.ci_low):.3g}, {float(row.ci_high):.3g}] (n={row.n}) · {float(row.threshold):.3g}"
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
