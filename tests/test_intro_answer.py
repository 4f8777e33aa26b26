"""The intro's first screen (tools/intro_answer.py): findings with paper-profile badges, the profile, the matrix."""

import pandas as pd
import pytest

from tools import intro_answer

PAPER = pd.DataFrame(
    {
        "chapter": ["grokking", "grokking", "drift_map", "mixture_tpm", "mixture_tpm", "mixture_tpm"],
        "claim_id": ["C1", "C2", "C22", "C17", "C18", "C19"],
        "verdict": [
            "inconclusive",
            "not reproduced",
            "not reproduced",
            "verified (identity)",
            "not reproduced",
            "verified (identity)",
        ],
        "n": ["3", "3", "5", "", "", ""],
        "commit": ["9a41aea"] * 3 + ["99e4517"] * 3,
    }
)


def test_a_finding_naming_a_claim_the_table_lacks_stops_the_build():
    missing = r"\['C10', 'C10-map', 'C11', 'C13', 'C14', 'C15', 'C16', 'C24', 'C25'\]"
    with pytest.raises(ValueError, match=f"FINDINGS names claims {missing}"):
        intro_answer.findings_markdown(PAPER)


def test_findings_carry_the_paper_verdicts_and_their_commits(monkeypatch):
    monkeypatch.setattr(intro_answer, "FINDINGS", {"Park": ("It does not drift.", ("C2", "C22")), "TPM": ("Tilts.", ("C18",))})
    text = intro_answer.findings_markdown(PAPER)
    assert "(3–5 seeds per claim; measured at commits `99e4517`, `9a41aea`)" in text
    park = next(line for line in text.splitlines() if line.startswith("- **Park:**"))
    assert park.count('class="verdict-badge"') == 2 and 'data-verdict="not reproduced"' in park
    assert 'href="chapters/drift_map.html#claim-C22"' in park  # from book/intro.html to the claim's row


def test_the_first_screen_names_the_profile_and_every_chapter(monkeypatch):
    monkeypatch.setattr(intro_answer, "FINDINGS", {"Park": ("It does not drift.", ("C2",))})
    monkeypatch.setattr(intro_answer.pd, "read_csv", lambda *a, **k: PAPER)
    claims = PAPER[PAPER["chapter"] == "grokking"].assign(statement="s")
    text = intro_answer.intro_markdown("quick", "1–2 seeds per chapter", "1 of 2 claims tested", [
        ("grokking", "Does DPO grok?", claims), ("ches", "Does CHES work?", "chapter failed")])  # fmt: skip
    assert "the `quick` profile (1–2 seeds per chapter): 1 of 2 claims tested" in text
    assert "most verdicts here are `inconclusive` by design" in text
    assert "| {doc}`Does DPO grok? </book/chapters/grokking>` | " in text and "| chapter failed |" in text
    assert text.index("It does not drift.") < text.index("| chapter |")  # the findings come first
