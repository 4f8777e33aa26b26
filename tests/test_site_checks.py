"""The site check's reader-facing checks (tools/site_checks.py), each shown to fail on a page built
to break it and to pass on the same page fixed the way the book fixes it (book/_ext/static)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tools import site_checks
from tools.chapter_answer import BADGE_COLOURS, badge

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "book" / "_ext" / "static"
OLD_PALETTE = {  # the badge colours before issue 38: partly and not reproduced turn the same olive
    "reproduced": "#1b7f3b",
    "partly": "#9a5b00",
    "not reproduced": "#b3261e",
    "inconclusive": "#6a3d9a",
}


def _css(hex_colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)))


def test_the_book_palette_stays_apart_under_deuteranopia_and_protanopia():
    colours = {verdict: _css(background) for verdict, (background, _) in BADGE_COLOURS.items()}
    assert site_checks.colour_failures(colours) == []


def test_the_old_palette_fails_the_colour_check():
    failures = site_checks.colour_failures({v: _css(c) for v, c in OLD_PALETTE.items()})
    pair = [f for f in failures if "'not reproduced'" in f and "'partly'" in f and "deuteranopia" in f]
    assert pair, failures
    assert float(pair[0].split("differ by ")[1].split()[0]) < 10  # the issue measured 8


def test_simulated_colours_against_known_values():
    white = site_checks.simulated_lab("rgb(255, 255, 255)", None)
    assert white == pytest.approx([100, 0, 0], abs=0.01)  # D65 white
    for deficiency in site_checks.DEFICIENCIES:  # white and black are seen as they are
        assert site_checks.simulated_lab("rgb(255, 255, 255)", deficiency) == pytest.approx([100, 0, 0], abs=0.5)
        assert site_checks.simulated_lab("rgb(0, 0, 0)", deficiency) == pytest.approx([0, 0, 0], abs=0.01)
    red, green = "rgb(213, 94, 0)", "rgb(0, 158, 115)"  # vermillion and bluish green: far apart to most readers
    assert site_checks.delta_e(red, green, None) > 40
    assert site_checks.delta_e(red, green, "Deuteranomaly") < site_checks.delta_e(red, green, None) / 2
    assert site_checks.delta_e(red, red, "Protanomaly") == 0


def test_every_badge_text_has_contrast():
    def luminance(hex_colour: str) -> float:
        channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    for background, text in BADGE_COLOURS.values():  # WCAG 2 contrast ratio, AA for normal text
        low, high = sorted((luminance(background), luminance(text)))
        assert (high + 0.05) / (low + 0.05) >= 4.5, (background, text)


# ---- in the browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        pytest.skip("no chromium and chromedriver here (make test's site check needs them)")
    from tools.check_site import _driver

    driver = _driver()
    yield driver
    driver.quit()


@pytest.fixture
def site(tmp_path):
    """Serve tmp_path; returns (write(name, body, fixed) → url)."""
    from tools.check_site import _serve

    shutil.copy(STATIC / "book.css", tmp_path)
    shutil.copy(STATIC / "book.js", tmp_path)
    server, base = _serve(tmp_path)

    def write(name: str, body: str, fixed: bool = False, head: str = "") -> str:
        assets = '<link rel="stylesheet" href="book.css"><script src="book.js"></script>' if fixed else ""
        (tmp_path / name).write_text(
            f'<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            f'initial-scale=1">{assets}{head}</head><body><article style="max-width:772px">{body}</article></body></html>'
        )
        return base + name

    yield write
    server.shutdown()


def _open(driver, url: str, viewport: str = "desktop") -> None:
    from tools.check_site import _load

    site_checks.set_viewport(driver, viewport)
    assert _load(driver, url, url) == []


def test_first_screen_needs_the_badges_near_the_top(browser, site):
    a_badge = badge("C1", "reproduced", "It holds.")
    _open(browser, site("low.html", f'<div style="height:1200px">the claim at length</div>{a_badge}'))
    assert "below the first 900 px" in site_checks.first_screen_failures(browser, "low.html")[0]
    _open(browser, site("none.html", "<p>no badge</p>"))
    assert site_checks.first_screen_failures(browser, "none.html") == ["none.html: no verdict badge on the page"]
    _open(browser, site("top.html", f"<h1>Does it hold?</h1>{a_badge}"))
    assert site_checks.first_screen_failures(browser, "top.html") == []


def test_a_badge_without_its_glyph_fails(browser, site):
    bare = '<span class="verdict-badge" data-verdict="partly" style="background:#F0E442">C2</span>'
    _open(browser, site("bare.html", bare + badge("C1", "reproduced", "ok")))
    failures = site_checks.glyph_failures(browser, "bare.html")
    assert len(failures) == 1 and "'C2' (partly) has no glyph" in failures[0]


def test_snake_case_headers_and_cut_cells_fail(browser, site):
    table = "<table><thead><tr><th>drift_fraction</th><th>onset epoch</th></tr></thead><tbody><tr><td>0.5</td><td>sucks (+4.4e-06), weird (+2.1...</td></tr></tbody></table>"  # noqa: E501
    _open(browser, site("raw.html", table))
    failures = site_checks.table_text_failures(browser, "raw.html")
    assert len(failures) == 2 and "'drift_fraction'" in failures[0] and "cut short" in failures[1]
    _open(browser, site("ok.html", table.replace("drift_fraction", "drift fraction").replace("...", ")")))
    assert site_checks.table_text_failures(browser, "ok.html") == []


WIDE_TABLE = (
    "<table><thead><tr>" + "".join(f"<th>column {i}</th>" for i in range(9)) + "</tr></thead><tbody><tr>"
    + "".join("<td>0.123456&nbsp;[0.01,&nbsp;0.99]</td>" for _ in range(9)) + "</tr></tbody></table>"
)  # fmt: skip
LONG_CODE = "<p>See <code>dpo_toolkit.studies.vanishing_gradients.claims.vanishing_claims</code> for the rules.</p>"


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_wide_tables_and_long_code_fail_unless_the_book_styles_fit_them(browser, site, viewport):
    body = WIDE_TABLE + LONG_CODE
    _open(browser, site("wide.html", body), viewport)
    failures = site_checks.width_failures(browser, "wide.html", viewport)
    assert any("table 'column 0'" in f for f in failures), failures
    if viewport == "phone":
        assert any("the page is" in f for f in failures), failures  # the inline code widens the page
    _open(browser, site("fitted.html", body, fixed=True), viewport)
    assert site_checks.width_failures(browser, "fitted.html", viewport) == []
    labels = browser.execute_script("return [...document.querySelectorAll('td')].map(td => td.dataset.label)")
    assert labels[:2] == ["column 0", "column 1"]  # a stacked cell shows its column's header


def test_figures_link_their_full_size_image(browser, site, tmp_path):
    shutil.copy(ROOT / "book" / "favicon.png", tmp_path / "fig.png")
    _open(browser, site("fig.html", '<img src="fig.png" alt="a figure">', fixed=True))
    href = browser.execute_script("const a = document.querySelector('img').closest('a'); return a && a.getAttribute('href')")
    assert href == "fig.png"


def test_raw_tex_fails_and_offline_mathjax_typesets_it(browser, site, tmp_path):
    maths = '<p>The loss is <span class="math notranslate nohighlight">\\(-\\log\\sigma(\\beta m)\\)</span>.</p>'
    _open(browser, site("tex.html", maths))
    failures = site_checks.math_failures(browser, "tex.html")
    assert len(failures) == 1 and "raw TeX (MathJax never loaded)" in failures[0]
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None:
        pytest.skip("sphinx-mathjax-offline is not installed (the book's [book] extra)")
    shutil.copytree(Path(spec.origin).parent / "static" / "mathjax", tmp_path / "mathjax")
    _open(browser, site("typeset.html", maths, head='<script defer src="mathjax/tex-chtml.js"></script>'))
    assert site_checks.math_failures(browser, "typeset.html") == []
    assert browser.execute_script("return document.querySelectorAll('mjx-container').length") == 1


def test_an_image_whose_alt_text_is_its_file_name_fails(browser, site, tmp_path):
    from tools.check_site import _image_failures

    shutil.copy(ROOT / "book" / "favicon.png", tmp_path / "fig.png")
    _open(browser, site("alt.html", '<img src="fig.png" alt="../../_images/fig.png"><img src="fig.png" alt="">'))
    failures = _image_failures(browser, "alt.html")
    assert len(failures) == 2 and all("has no alt text but its file name" in f for f in failures)
    _open(browser, site("described.html", '<img src="fig.png" alt="OOD rate against KL, one point per checkpoint">'))
    assert _image_failures(browser, "described.html") == []
