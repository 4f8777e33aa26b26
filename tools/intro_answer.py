"""The first screen of the book's intro: the profile this site was built at, one finding per source
study at the paper profile, and this build's verdict matrix (written by ``bookbuild scorecard`` to
``scorecard_summary.md``, which book/intro.md includes).

A finding's sentence is written by hand; its badges are read from the paper-profile claims table
(benchmarks/results/claims_paper_default.csv) at build time, with the commit that measured them,
and a finding that names a claim the table lacks stops the build.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from dpo_toolkit.core.claims import GLYPHS, claim_anchor
from tools.chapter_answer import badge

ROOT = Path(__file__).resolve().parents[1]
PAPER_CLAIMS = ROOT / "benchmarks" / "results" / "claims_paper_default.csv"

FINDINGS = {  # source study → (what the paper profile found, the claims it rests on)
    "Park, *Handle With Care!* (§4.1–4.3)": (
        "DPO on the number-line task does not drift out of distribution and stay there, and Park's recipe drifts in "
        "no run of the drift map. DPO drifts here only with large adaptive steps and many updates (10× Park's learning "
        "rate, thousands of updates); at Park's rate the OOD rate rises gradually without reaching 50 %.",
        ("C2", "C22", "C25", "C24"),
    ),
    "The TPM blog post (Lemma 1, Theorem 2)": (
        "The DPO optimum tilts an aligned/unaligned mixture exactly as Lemma 1 says, but Theorem 2 as worded fails on "
        "some instances; the exact condition behind it never does.",
        ("C17", "C18", "C19"),
    ),
    "Razin et al., ICLR 2024 (vanishing gradients)": (
        "RL fine-tuning does not stall on small-std, low-reward inputs here: net of transfer from other prompts they "
        "gain more than larger-std inputs.",
        ("C14", "C15", "C16"),
    ),
    "Razin et al., arXiv 2410.08847 (likelihood displacement)": (
        "DPO in a tiny persona LM does not displace the preferred token as the talk's table shows (the theory itself "
        "predicts no fall there), DPO on refusal pairs does not unalign a toy safety model, and CHES cannot be tested: "
        "plain gradient descent displaces almost no single pair.",
        ("C10", "C10-map", "C13", "C11"),
    ),
}


def findings_markdown(paper: pd.DataFrame) -> str:
    """One line per source study: its finding and the paper-profile badges of the claims it rests on."""
    by_id = {row.claim_id: row for row in paper.itertuples()}
    missing = sorted({c for _, ids in FINDINGS.values() for c in ids} - set(by_id))
    if missing:
        raise ValueError(f"tools/intro_answer.py: FINDINGS names claims {missing} that {PAPER_CLAIMS.name} does not hold")
    commits = sorted(set(paper["commit"].astype(str)))
    replicates = sorted({int(float(n)) for n in paper["n"] if n})
    lines = []
    for study, (sentence, ids) in FINDINGS.items():
        badges = " ".join(
            badge(c, by_id[c].verdict, f"{by_id[c].verdict} at the paper profile", href=_href(by_id[c].chapter, c)) for c in ids
        )
        lines.append(f"- **{study}:** {html.escape(sentence, quote=False)} {badges}")
    measured = f"commit{'s' if len(commits) > 1 else ''} " + ", ".join(f"`{c}`" for c in commits)
    return (
        f"**At the paper profile** ({replicates[0]}–{replicates[-1]} seeds per claim; measured at {measured}):\n\n"
        + "\n".join(lines)
    )


def _href(stem: str, claim_id: str) -> str:
    return f"chapters/{stem}.html#{claim_anchor(claim_id)}"  # from book/intro.html


def intro_markdown(profile: str, seeds: str, summary: str, matrix: list[tuple[str, str, pd.DataFrame | str]]) -> str:
    """The intro's first screen. ``matrix``: (stem, chapter title, claims table or what went wrong) per chapter."""
    rows = []
    for stem, title, claims in matrix:
        link = f"{{doc}}`{title} </book/chapters/{stem}>`"
        if isinstance(claims, str):
            rows.append(f"| {link} | {claims} |")
            continue
        cells = " ".join(badge(c.claim_id, c.verdict, c.statement, href=_href(stem, c.claim_id)) for c in claims.itertuples())
        rows.append(f"| {link} | {cells} |")
    paper = findings_markdown(pd.read_csv(PAPER_CLAIMS, dtype=str, keep_default_na=False))
    caveat = (
        " With so few replicates most verdicts here are `inconclusive` by design; `make book` runs the paper profile."
        if profile == "quick"
        else ""
    )
    legend = " · ".join(f"{glyph} {verdict}" for verdict, glyph in GLYPHS.items())
    return f"""::::{{admonition}} What the book finds, and what this site shows (the `{profile}` profile)
:class: important book-answer
{paper}

**This site** was built at the `{profile}` profile ({seeds}): {summary} ({{doc}}`scorecard </book/chapters/scorecard>`).{caveat}

| chapter | verdict of each claim |
| --- | --- |
{chr(10).join(rows)}

{legend}
::::
"""
