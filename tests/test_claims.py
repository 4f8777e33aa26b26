from pathlib import Path

import pytest

from dpo_toolkit.core.claims import (
    COLUMNS,
    claims_frame,
    decide,
    identity,
    read_claims,
    results_dir,
    verdict,
    with_arm,
    write_claims,
)
from dpo_toolkit.core.evidence import Check, mean_interval

OLD = "claim_id,statement,paper_value,our_value,verdict,precondition\n"
FULL = "claim_id,statement,paper_value,our_value,verdict,precondition,n,estimate,ci_low,ci_high,threshold\n"
ROW = {"claim_id": "C1", "statement": "s", "paper_value": "p", "our_value": "o", "verdict": "partly"}


def test_roundtrip(tmp_path):
    df = claims_frame([ROW])
    path = write_claims(df, tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    empty = dict.fromkeys(["n", "estimate", "ci_low", "ci_high", "threshold"], "")  # an exact claim: no interval
    assert read_claims(path).to_dict("records") == [{**ROW, "precondition": "none", **empty}]  # 'none' when absent


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("claim_id,statement,verdict\nC1,s,partly\n", "columns must be"),
        ("claim_id,statement,paper_value,our_value,verdict\nC1,s,p,o,partly\n", "columns must be"),  # no precondition
        (
            "claim_id,statement,paper_value,our_value,verdict,precondition\nC1,s,p,o,partly,none\n",
            "columns must be",
        ),  # no evidence columns
        (
            FULL + "C1,s,p,o,maybe,none,,,,,\n",
            "verdict must be one of",
        ),
        (
            FULL + "C1,s,p,o,partly,none,,,,,\nC1,s,p,o,partly,none,,,,,\n",
            "duplicate claim_id",
        ),
        (
            FULL + "C1,s,p,o,reproduced,none,3,0.6,0.4,0.8,0.5\n",
            "straddles",
        ),
    ],
)
def test_malformed_files_are_named(tmp_path, text, message):
    path = tmp_path / "claims.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_claims(path)
    assert str(path) in str(info.value)


def test_bad_verdict_rejected_when_built():
    with pytest.raises(ValueError, match="verdict"):
        claims_frame([{**ROW, "verdict": "yes"}])


def test_results_dir_respects_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_RESULTS_ROOT", str(tmp_path))
    assert results_dir("chap") == tmp_path / "chap"
    assert (tmp_path / "chap").is_dir()
    assert results_dir("x", tmp_path / "other") == tmp_path / "other" / "x"


def test_results_go_to_the_repository_top_without_the_env(tmp_path, monkeypatch):
    import dpo_toolkit.core.claims as claims

    monkeypatch.delenv("DPO_RESULTS_ROOT", raising=False)
    top = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(Path, "mkdir", lambda self, **kw: None)  # nothing is created by this check
    assert results_dir("chap") == top / "_build" / "results" / "chap"  # where make book and the scorecard read
    fake = tmp_path / "site-packages" / "dpo_toolkit" / "core" / "claims.py"  # a pip-installed toolkit
    monkeypatch.setattr(claims, "__file__", str(fake))
    monkeypatch.chdir(tmp_path)
    assert results_dir("chap") == tmp_path / "_build" / "results" / "chap"


def test_claims_table_shows_every_cell_in_full_without_a_positional_index():
    from dpo_toolkit.core.claims import ClaimsTable

    long = "final OOD β=0.01: 13 %, β=0.1: 13 %, β=0.5: 13 %, and more text than pandas shows by default"
    table = ClaimsTable(
        claims_frame(
            [{"claim_id": "C1", "statement": "DPO drifts", "paper_value": "80 %", "our_value": long, "verdict": "partly"}]
        )
    )
    html, text = table._repr_html_(), repr(table)
    assert long in html and long in text
    assert "…" not in html and "..." not in html
    assert "<th>claim</th>" in html and "<th></th>" not in html  # no positional index column
    assert text.startswith("C1 [partly] DPO drifts")
    assert "<td>◐ partly</td>" in html and "<td>exact</td>" in html  # a glyph beside the verdict; no interval
    assert '<tr id="claim-C1">' in html and html.count("<tr") == 2  # the row is its badges' target; the header has none
    assert html.index("<th>claim</th>") < html.index("<th>verdict</th>") < html.index("<th>statement</th>")  # verdict second
    decided = ClaimsTable(claims_frame([{**ROW, **decide(Check("x", mean_interval([0.9, 1.0, 1.1]), 0.5))}]))._repr_html_()
    assert "<td>✓ reproduced</td>" in decided and "<td>1 [0.752, 1.25] (n=3) · 0.5</td>" in decided


@pytest.mark.parametrize(
    ("full", "part", "testable", "expected"),
    [
        (True, True, True, "reproduced"),
        (False, True, True, "partly"),
        (False, False, True, "not reproduced"),
        (True, True, False, "untestable here"),  # a failed precondition wins over everything the run shows
        (False, False, False, "untestable here"),
    ],
)
def test_the_one_verdict_ladder(full, part, testable, expected):
    assert verdict(full, part, testable) == expected


def test_an_identity_is_verified_never_reproduced():
    assert identity(True) == "verified (identity)"
    assert identity(False) == "not reproduced"


def test_a_second_arm_is_labelled_and_kept_apart():
    paper = claims_frame(
        [{"claim_id": "C4", "statement": "KL grows.", "paper_value": "p", "our_value": "o", "verdict": "partly"}]
    )
    arm = paper.assign(verdict="reproduced", our_value="o2")
    both = with_arm(paper, arm, "-drift", "drifting arm")
    assert both["claim_id"].tolist() == ["C4", "C4-drift"]
    assert both["statement"].tolist() == ["KL grows.", "[drifting arm] KL grows."]
    assert both["verdict"].tolist() == ["partly", "reproduced"]  # the arm never overwrites the paper's verdict
    with pytest.raises(ValueError, match="duplicate"):
        with_arm(both, arm.assign(claim_id="C4-drift"), "", "again")


def test_claim_text_fills_the_static_fields_and_renders_its_source():
    from dpo_toolkit.core.claims import ClaimText

    text = {"C1": ClaimText("It drifts.", "80 % OOD", "§4.1"), "C2": ClaimText("It rises.", "monotone")}
    df = claims_frame(
        [
            {"claim_id": "C1", "our_value": "81 %", "verdict": "verified (identity)"},
            {"claim_id": "C2", "our_value": "yes", "verdict": "verified (identity)"},
        ],
        text=text,
    )
    assert df["statement"].tolist() == ["It drifts.", "It rises."]
    assert df["paper_value"].tolist() == ["80 % OOD (§4.1)", "monotone"]
