"""What the site check (tools/check_site.py) asks of a loaded page for a reader's first minutes:
the chapter's verdicts on its first screen, verdicts told by a glyph and by colours that stay
apart under colour-vision deficiency, readable tables, nothing wider than a phone, and maths
typeset offline. Each function reads the page the driver has loaded and returns failures as
lines naming the page; ``colour_failures`` works on colours gathered over the whole site.
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np

from dpo_toolkit.core.claims import GLYPHS
from dpo_toolkit.tables import is_variable_name

VIEWPORTS = {"desktop": (1400, 900), "phone": (390, 844)}  # CSS px: a laptop's first screen, a phone's
FIRST_SCREEN_PX = 900  # a chapter's verdict badges start within its first screen at 1400 × 900
MIN_DELTA_E = 20.0  # CIEDE2000 between any two verdict colours, seen by a dichromat: clearly different
DEFICIENCIES = ("Deuteranomaly", "Protanomaly")  # Machado 2009 at severity 1: deuteranopia, protanopia
BADGES = ".verdict-badge, .verdict-legend"


def set_viewport(driver, name: str) -> None:
    """Emulate VIEWPORTS[name] (CSS px, device scale 1; the phone as a mobile device)."""
    width, height = VIEWPORTS[name]
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": name == "phone"},
    )


def first_screen_failures(driver, page: str) -> list[str]:
    """A chapter page whose first verdict badge starts below its first screen (or that has none)."""
    top = driver.execute_script(
        "const b = document.querySelector('article .verdict-badge');"
        "return b ? b.getBoundingClientRect().top + window.scrollY : null"
    )
    if top is None:
        return [f"{page}: no verdict badge on the page"]
    if top > FIRST_SCREEN_PX:
        return [f"{page}: the first verdict badge starts {top:.0f} px down, below the first {FIRST_SCREEN_PX} px"]
    return []


def glyph_failures(driver, page: str) -> list[str]:
    """Badges whose text does not start with their verdict's glyph (colour would be their only sign)."""
    badges = driver.execute_script(
        f"return [...document.querySelectorAll('{BADGES}')].map(b => [b.dataset.verdict, b.textContent.trim()])"
    )
    return [
        f"{page}: badge {text!r} ({verdict}) has no glyph; expected {GLYPHS.get(verdict, '?')!r} first"
        for verdict, text in badges
        if verdict not in GLYPHS or not text.startswith(GLYPHS[verdict])
    ]


def table_text_failures(driver, page: str) -> list[str]:
    """Table headers in snake_case and cells cut short with an ellipsis, in every table of the page."""
    headers, cells = driver.execute_script(
        "const a = document.querySelector('article') || document.body;"
        "return [[...a.querySelectorAll('table th')].map(e => e.textContent.trim()),"
        "        [...a.querySelectorAll('table td')].map(e => e.textContent.trim())]"
    )
    failures = [f"{page}: table header {h!r} is a variable name (snake_case)" for h in headers if is_variable_name(h)]
    return failures + [f"{page}: table cell cut short: {c[-60:]!r}" for c in cells if c.endswith(("…", "..."))]


def width_failures(driver, page: str, viewport: str) -> list[str]:
    """A page wider than the viewport, or a table wider than the box it sits in, at this viewport."""
    page_width, inner, tables = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth,"
        "  [...document.querySelectorAll('article table')].map(t =>"
        "    [t.scrollWidth, t.parentElement.clientWidth, (t.querySelector('th, td')?.textContent || '').trim().slice(0, 30)])]"
    )
    failures = []
    if page_width > inner + 1:
        failures.append(f"{page} at {viewport} width: the page is {page_width} px wide in a {inner} px viewport")
    failures += [
        f"{page} at {viewport} width: table {first!r} is {width} px wide in a {box} px column"
        for width, box, first in tables
        if width > box + 1
    ]
    return failures


def math_failures(driver, page: str, timeout_s: float = 20) -> list[str]:
    """Maths still shown as TeX source after MathJax has run (or MathJax missing where there is maths)."""
    driver.set_script_timeout(timeout_s)
    typeset = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const p = window.MathJax && MathJax.startup && MathJax.startup.promise;"
        "if (p) p.then(() => done(true), () => done(false)); else done(null);"
    )
    raw = driver.execute_script(
        "const a = (document.querySelector('article') || document.body).cloneNode(true);"
        "a.querySelectorAll('pre, code, script, style, textarea').forEach(e => e.remove());"
        "return a.textContent"
    )
    found = re.findall(r"\\\(|\\\[", raw)
    if not found:
        return []
    state = {True: "after MathJax ran", False: "MathJax failed", None: "MathJax never loaded"}[typeset]
    return [f"{page}: {len(found)} formulas shown as raw TeX ({state})"]


def badge_colours(driver) -> dict[str, str]:
    """verdict → the computed background colour of its badges on this page ('rgb(r, g, b)')."""
    pairs = driver.execute_script(
        f"return [...document.querySelectorAll('{BADGES}')].map(b => [b.dataset.verdict, getComputedStyle(b).backgroundColor])"
    )
    return dict(pairs)


def _rgb(css: str) -> np.ndarray:
    """'rgb(0, 114, 178)' or 'rgba(…)' → sRGB in [0, 1]."""
    values = [float(v) for v in re.findall(r"[\d.]+", css)[:3]]
    return np.array(values) / 255.0


def simulated_lab(css: str, deficiency: str | None) -> np.ndarray:
    """CIE Lab (D65) of a CSS colour as seen with the deficiency (None: normal vision), by the Machado
    2009 matrix at full severity applied in linear sRGB."""
    import colour  # colour-science: imported here, only the site check needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # colour-science's notes on optional packages
        linear = colour.cctf_decoding(_rgb(css), function="sRGB")
        if deficiency:
            linear = np.clip(colour.matrix_cvd_Machado2009(deficiency, 1.0) @ linear, 0, 1)
        xyz = colour.RGB_to_XYZ(linear, colour.RGB_COLOURSPACES["sRGB"], apply_cctf_decoding=False)
        return colour.XYZ_to_Lab(xyz)


def delta_e(css_a: str, css_b: str, deficiency: str | None) -> float:
    """CIEDE2000 between two CSS colours as seen with the deficiency."""
    import colour

    return float(colour.delta_E(simulated_lab(css_a, deficiency), simulated_lab(css_b, deficiency), method="CIE 2000"))


def colour_failures(colours: dict[str, str]) -> list[str]:
    """Pairs of verdicts whose badge colours come closer than MIN_DELTA_E under a simulated
    deuteranopia or protanopia, or that share one colour in normal vision."""
    failures = []
    for (va, ca), (vb, cb) in itertools.combinations(sorted(colours.items()), 2):
        for deficiency in (None, *DEFICIENCIES):
            distance = delta_e(ca, cb, deficiency)
            if distance < MIN_DELTA_E:
                seen = f"under simulated {deficiency.lower().removesuffix('omaly')}opia" if deficiency else "in normal vision"
                failures.append(
                    f"verdict colours of {va!r} ({ca}) and {vb!r} ({cb}) differ by {distance:.1f} {seen} (CIEDE2000; "
                    f"at least {MIN_DELTA_E:g})"
                )
    return failures
