import pytest

from dpo_toolkit.claims import COLUMNS, claims_frame, read_claims, results_dir, write_claims

ROW = {"claim_id": "C1", "statement": "s", "paper_value": "p", "our_value": "o", "verdict": "partly"}


def test_roundtrip(tmp_path):
    df = claims_frame([ROW])
    path = write_claims(df, tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_claims(path).to_dict("records") == [ROW]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("claim_id,statement,verdict\nC1,s,partly\n", "columns must be"),
        ("claim_id,statement,paper_value,our_value,verdict\nC1,s,p,o,maybe\n", "verdict must be one of"),
        ("claim_id,statement,paper_value,our_value,verdict\nC1,s,p,o,partly\nC1,s,p,o,partly\n", "duplicate claim_id"),
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
