"""The box at the top of every built chapter: its answer at this profile, computed from its
claims table (``claims.csv``), above the first figure; and the verdict badges the box and the
scorecard share."""

from __future__ import annotations

import html
import math

import pandas as pd

from dpo_toolkit.core.claims import GLYPHS, IDENTITY, INCONCLUSIVE, TESTED, UNTESTABLE, claim_anchor

# verdict → (background, text colour). The Okabe–Ito palette (Okabe & Ito 2008, "Color Universal
# Design"): every pair of backgrounds stays ≥ 20 apart in CIEDE2000 under simulated deuteranopia and
# protanopia (Machado 2009, full severity; tools/site_checks.py checks it on the built site), and each
# text colour has WCAG AA contrast (≥ 4.5) on its background.
BADGE_COLOURS = {
    "reproduced": ("#0072B2", "#ffffff"),  # blue
    "partly": ("#F0E442", "#000000"),  # yellow
    "not reproduced": ("#D55E00", "#000000"),  # vermillion
    "inconclusive": ("#5A5A5A", "#ffffff"),  # dark grey: no decision
    "untestable here": ("#DDDDDD", "#000000"),  # light grey: no test
    "verified (identity)": ("#56B4E9", "#000000"),  # sky blue
}
BADGE_GLYPHS = GLYPHS  # a glyph beside each badge's id, so that no verdict is told by colour alone


def badge(claim_id: str, verdict: str, title: str, kind: str = "verdict-badge", href: str | None = None) -> str:
    """An inline HTML badge: a glyph and the claim's id on its verdict's colour, the verdict and
    statement on hover; a link to the claim's row when ``href`` is given."""
    background, text = BADGE_COLOURS.get(verdict, ("#444444", "#ffffff"))
    tip = html.escape(f"{claim_id}: {verdict}. {title}", quote=True).replace("|", "&#124;")  # a | would end the table cell
    span = (
        f'<span class="{kind}" data-verdict="{html.escape(verdict)}" title="{tip}" style="background:{background};'
        f"color:{text};border-radius:4px;padding:1px 6px;margin:0 4px 2px 0;display:inline-block;font-weight:600;"
        f'border:1px solid #555">{BADGE_GLYPHS.get(verdict, "")} {html.escape(claim_id)}</span>'
    )
    return f'<a class="badge-link" href="{html.escape(href, quote=True)}">{span}</a>' if href else span


def _evidence(claim) -> str:
    """'0.44 [0.38, 0.49], n = 3, threshold 0.35' for a claim decided on replicates; 'exact' otherwise."""
    if not claim.n:
        return "exact"
    if not all(math.isfinite(float(x)) for x in (claim.ci_low, claim.ci_high)):
        return f"{float(claim.estimate):.3g}, n = {claim.n}: too few replicates for an interval"
    return (
        f"{float(claim.estimate):.3g} [{float(claim.ci_low):.3g}, {float(claim.ci_high):.3g}], "
        f"n = {claim.n}, threshold {float(claim.threshold):.3g}"
    )


def answer_sentence(claims: pd.DataFrame) -> str:
    """One sentence from the verdicts: which claims this profile decides and how, and how many it leaves open."""
    decided = claims[claims["verdict"].isin(TESTED)]
    parts = [f"{c.claim_id} {c.verdict}" for c in decided.itertuples()]
    open_ = {
        "inconclusive": int((claims["verdict"] == INCONCLUSIVE).sum()),
        "untestable here": int((claims["verdict"] == UNTESTABLE).sum()),
        "exact identities verified": int((claims["verdict"] == IDENTITY).sum()),
    }
    rest = ", ".join(f"{n} {what}" for what, n in open_.items() if n)
    if not parts:
        return f"Nothing is decided on trained models at this profile ({rest})."
    return f"At this profile: {'; '.join(parts)}" + (f"; besides, {rest}." if rest else ".")


def answer_markdown(title: str, claims: pd.DataFrame, profile: str) -> str:
    """The chapter's answer box: its question, the sentence, one badge per claim with its verdict in
    words and its evidence, the profile; it points to the claims table at the end of the chapter."""
    lines = [
        f"- {badge(c.claim_id, c.verdict, c.statement, href='#' + claim_anchor(c.claim_id))} "
        f"**{html.escape(c.verdict)}** — {html.escape(c.statement)} "
        f"({_evidence(c)})"
        for c in claims.itertuples()
    ]
    replicates = sorted({int(n) for n in claims["n"] if n})
    reps = f"{replicates[0]}–{replicates[-1]}" if len(replicates) > 1 else f"{replicates[0]}" if replicates else "no"
    return f"""::::{{admonition}} The answer at the `{profile}` profile
:class: important chapter-answer
**{html.escape(title)}** {answer_sentence(claims)}

{chr(10).join(lines)}

Trained claims rest on {reps} independent replicate(s) each (a 95 % interval read against each claim's
threshold); the claims table at the end of the chapter has the numbers and the rule of each verdict.
::::
"""
