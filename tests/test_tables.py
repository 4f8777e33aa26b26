"""Readable headers (dpo_toolkit.tables): variable names become words, notation stays, cells stay whole."""

import pandas as pd
import pytest

from dpo_toolkit import tables


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("chosen_logp_change_mean", "chosen log π change (mean)"),
        ("ood_rate_std", "OOD rate (sd)"),
        ("kl_se", "KL (SE)"),
        ("drift_fraction", "drift fraction"),
        ("y_pos", "y+"),
        ("tpm_a_below_alpha", "TPM(A) < α"),
        ("mean kl_mc", "mean KL Monte Carlo"),  # a flattened two-level header: each name in it
        ("π_ref(y+)", "π_ref(y+)"),  # notation, not a variable name
        ("‖h‖²/‖W_z‖²", "‖h‖²/‖W_z‖²"),
        ("seed", "seed"),
        (3, 3),
    ],
)
def test_header(name, shown):
    assert tables.header(name) == shown
    assert not tables.is_variable_name(str(tables.header(name)))


def test_readable_renames_columns_levels_and_index_names_but_keeps_the_frame():
    frame = pd.DataFrame({("ood_rate", "low_reward"): [0.5], ("kl", "x"): [1.0]}, index=pd.Index([0], name="pairs_kept"))
    shown = tables.readable(frame)
    assert list(shown.columns) == [("OOD rate", "low reward"), ("KL", "x")] and shown.index.name == "pairs kept"
    assert ("ood_rate", "low_reward") in frame.columns and frame.index.name == "pairs_kept"  # the data keep their names


def test_html_keeps_every_cell_whole():
    long = "sucks (+4.4e-06), fake (+3.2e-06), weird (+2.1e-06), and more than fifty characters"
    html = tables.to_html(pd.DataFrame({"top_gainers": [long]}))
    assert long in html and "<th>top gainers</th>" in html and "..." not in html


def test_every_row_shows_a_table_longer_than_the_display_limit_whole():
    frame = pd.DataFrame({"pair_index": range(pd.get_option("display.max_rows") + 5)})
    assert "<td>...</td>" in tables.to_html(frame)  # the default view cuts it
    html = tables.every_row(frame)._repr_html_()
    assert "<td>...</td>" not in html and html.count("<tr") == len(frame) + 1 and "pair index" in html
    assert repr(tables.every_row(frame)).count("\n") == len(frame)
