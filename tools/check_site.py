"""Open every page of the built book in headless Chromium and check it.

    python -m tools.check_site BOOK_ROOT [--screenshots DIR]

BOOK_ROOT holds _toc.yml and the built _build/html. The site is served on localhost and
driven with Selenium through the distribution's chromium and chromedriver (never a
downloaded browser). For the intro, every page of the table of contents and the
bibliography, at a 1,400 × 900 viewport, it checks that the page loads with no console
errors, that every image has a non-zero natural size and alt text that is not a file name,
that every link within the site resolves (and every #fragment names an element of its
page), and that the scorecard links every chapter. It also checks that no figure is wider
than the text column or shrunk into it by more than dpo_toolkit.plotting.MAX_SHRINK (which
keeps tick labels ≥ 10 px), that figure numbers restart in each chapter, and what
tools/site_checks.py asks for a reader's first minutes: each chapter's verdict badges on its
first screen, a glyph in every badge, verdict colours apart under simulated colour-vision
deficiency, readable table headers and whole cells, maths typeset, and no table or page
wider than its column or viewport, at 1,400 px and again at a phone's 390 px. It saves a
screenshot of each page's first screen at both sizes, of its first claims table and of its
widest figure, and exits 1 listing every failure.

MathJax is served from the built site (sphinx-mathjax-offline). Console errors that say a
resource on another host could not load (net::ERR_NAME_NOT_RESOLVED and the like) are
reported as skipped, not as failures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import yaml
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from dpo_toolkit.plotting import MAX_SHRINK, MIN_TICK_PX
from tools.site_checks import (
    badge_colours,
    colour_failures,
    first_screen_failures,
    glyph_failures,
    math_failures,
    set_viewport,
    table_text_failures,
    width_failures,
)

GENERATED = ("scorecard", "performance")  # pages of the book under chapters/, not chapters


def toc_pages(book_root: Path) -> list[str]:
    """Site paths of the root page and of every file in _toc.yml, in order."""
    toc = yaml.safe_load((book_root / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return [f"{f}.html" for f in files]


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the browser moved on mid-download
            super().handle()


OFFLINE = ("net::ERR_NAME_NOT_RESOLVED", "net::ERR_INTERNET_DISCONNECTED", "net::ERR_CONNECTION_REFUSED")


def _driver() -> webdriver.Chrome:
    browser, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver):
        raise SystemExit(
            "check_site needs the distribution's chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def _resolves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # only this site's own URLs reach here
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _load(driver: webdriver.Chrome, url: str, page: str) -> list[str]:
    """Open the page and wait for it to load; a failure when it does not within 20 s."""
    driver.get(url)
    deadline = time.time() + 20
    time.sleep(0.05)  # a change of emulated viewport can start the load over just after get() returns
    while driver.execute_script("return document.readyState") != "complete" and time.time() < deadline:
        time.sleep(0.2)
    return (
        []
        if driver.execute_script("return document.readyState") == "complete"
        else [f"{page}: did not finish loading within 20 s"]
    )


def _console_failures(driver: webdriver.Chrome, base: str, page: str) -> list[str]:
    failures = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        message = entry["message"]
        if any(code in message for code in OFFLINE) and urlparse(message.split()[0]).netloc != urlparse(base).netloc:
            print(f"skipped (offline): {page}: {message}")
            continue
        failures.append(f"{page}: console error: {message}")
    return failures


def _image_failures(driver: webdriver.Chrome, page: str) -> list[str]:
    images = driver.execute_script(
        "return [...document.images].map(i => [i.currentSrc || i.src, i.naturalWidth, i.naturalHeight])"
    )
    failures = [f"{page}: image {src} has natural size {w}×{h}" for src, w, h in images if not (w and h)]
    alts = driver.execute_script("return [...document.querySelectorAll('article img')].map(i => [i.currentSrc || i.src, i.alt])")
    named = [(src, alt) for src, alt in alts if not alt.strip() or alt.strip().lower().endswith((".png", ".svg", ".jpg"))]
    return failures + [
        f"{page}: image {src.rsplit('/', 1)[-1][:16]}… has no alt text but its file name ({alt!r})" for src, alt in named
    ]


def _link_failures(driver: webdriver.Chrome, base: str, url: str, page: str) -> list[str]:
    failures, checked = [], {}
    for link in driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)"):
        target, fragment = urldefrag(link)
        if urlparse(target).netloc != urlparse(base).netloc:
            continue  # external: not this site's to check
        if target not in checked:
            checked[target] = _resolves(target)
        if not checked[target]:
            failures.append(f"{page}: broken link {link}")
        elif (
            fragment
            and target == url
            and not driver.execute_script("return document.getElementById(arguments[0]) !== null", fragment)
        ):
            failures.append(f"{page}: link to missing anchor #{fragment}")
    return failures


def check_page(driver: webdriver.Chrome, base: str, page: str, screenshots: Path, colours: dict | None = None) -> list[str]:
    """Every failure found on one page, as lines naming the page; the badge colours it shows go into
    ``colours`` (verdict → CSS colour) for the site-wide colour check."""
    url = urljoin(base, page)
    set_viewport(driver, "desktop")
    failures = _load(driver, url, page)
    failures += _console_failures(driver, base, page) + _image_failures(driver, page)
    cells = driver.execute_script("return [...document.querySelectorAll('table.claims-table td')].map(td => td.textContent)")
    raw_tables = driver.execute_script(
        "return [...document.querySelectorAll('article p, article div.output pre, article div.cell_output')]"
        "  .map(e => e.innerText).filter(t => /^\\s*\\|.*\\|\\s*$/m.test(t) && /\\|\\s*-{3,}/.test(t))"
    )
    failures += [f"{page}: Markdown table shown as raw text: {text.strip()[:60]!r}" for text in raw_tables]
    chapter = "chapters/" in page and Path(page).stem not in GENERATED
    if chapter and not cells:
        failures.append(f"{page}: no claims table (class claims-table)")
    if chapter:
        failures += first_screen_failures(driver, page)
    failures += glyph_failures(driver, page) + table_text_failures(driver, page) + math_failures(driver, page)
    failures += width_failures(driver, page, "desktop") + _figure_failures(driver, page)
    failures += _link_failures(driver, base, url, page)
    if colours is not None:
        colours.update(badge_colours(driver))
    screenshots.mkdir(parents=True, exist_ok=True)
    stem = page.replace("/", "__").removesuffix(".html")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(screenshots / f"{stem}.png"))  # the first screen at 1400 × 900
    _element_screenshots(driver, screenshots / stem)
    set_viewport(driver, "phone")
    failures += _load(driver, url, page) + width_failures(driver, page, "phone")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(screenshots / f"{stem}__phone.png"))  # the first screen at 390 × 844
    set_viewport(driver, "desktop")
    return failures


def _figure_failures(driver: webdriver.Chrome, page: str) -> list[str]:
    """Figures too wide for the column or shrunk so far that their text is illegible, and
    figure numbers that do not restart in each chapter (Fig. N.1, N.2, …)."""
    failures = []
    figures = driver.execute_script(
        "return [...document.querySelectorAll('article img')].filter(i => i.naturalWidth > 0).map(i =>"
        "  [i.currentSrc || i.src, i.naturalWidth, i.getBoundingClientRect().width,"
        "   i.closest('article').getBoundingClientRect().width])"
    )
    for src, natural, rendered, column in figures:
        name = src.rsplit("/", 1)[-1][:12]
        if rendered > column + 1:
            failures.append(f"{page}: figure {name}… is {rendered:.0f} px wide, wider than the {column:.0f} px column")
        if rendered > 0 and natural / rendered > MAX_SHRINK:
            failures.append(f"{page}: figure {name}… shrunk {natural / rendered:.2f}× ({natural} → {rendered:.0f} px; at most "
                            f"{MAX_SHRINK}×, or its text falls below {MIN_TICK_PX} px)")  # fmt: skip
    numbers = driver.execute_script(
        "return [...document.querySelectorAll('article .caption-number')].map(e => e.textContent.trim())"
    )
    found = [n for n in numbers if n.startswith("Fig")]
    parsed = [re.fullmatch(r"Fig\. (\d+)\.(\d+)", n) for n in found]
    restart = all(parsed) and len({m[1] for m in parsed}) <= 1 and [int(m[2]) for m in parsed] == list(range(1, len(parsed) + 1))
    if not restart:
        failures.append(f"{page}: figure numbers {found} do not restart in the chapter as N.1, N.2, …")
    return failures


def _element_screenshots(driver: webdriver.Chrome, stem: Path) -> None:
    """Screenshots of the page's first claims table and of its widest figure, beside the page's."""

    def shoot(element, path: str) -> None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)  # clear of the sticky header
        element.screenshot(path)

    table = driver.find_elements(By.CSS_SELECTOR, "table.claims-table")
    if table:
        shoot(table[0], f"{stem}__claims_table.png")
    images = driver.find_elements(By.CSS_SELECTOR, "article img")
    widths = [int(img.get_attribute("naturalWidth") or 0) for img in images]
    if images and max(widths) > 0:
        shoot(images[widths.index(max(widths))], f"{stem}__widest_figure.png")


def check_site(book_root: Path, screenshots: Path) -> list[str]:
    """All failures over the site's pages; empty when the site passes."""
    html = book_root / "_build" / "html"
    if not (html / "index.html").exists():
        return [f"no built site at {html} (run jupyter-book build first)"]
    pages = toc_pages(book_root)
    server, base = _serve(html)
    driver = _driver()
    failures, colours = [], {}
    try:
        for page in pages:
            if not (html / page).exists():
                failures.append(f"{page}: listed in _toc.yml but not built")
                continue
            failures += check_page(driver, base, page, screenshots, colours)
        failures += colour_failures(colours)
        scorecards = [p for p in pages if p.endswith("/scorecard.html")]
        if not scorecards:
            failures.append("no scorecard page in _toc.yml")
        else:
            driver.get(urljoin(base, scorecards[0]))
            hrefs = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
            banner = driver.execute_script(
                "const b = document.querySelector('.scorecard-banner'); return b ? [b.dataset.profile, b.textContent] : null"
            )
            if not banner or not banner[0] or f"{banner[0]} profile" not in banner[1]:
                failures.append(f"scorecard: no banner naming the profile the book was built at (found {banner!r})")
            badges, claims = driver.execute_script(
                "const tables = [...document.querySelectorAll('table')];"
                "const rows = tables.filter(t => t.querySelector('th')?.textContent.trim() === 'claim')"
                "  .flatMap(t => [...t.querySelectorAll('tbody tr')]);"
                "return [document.querySelectorAll('.verdict-badge').length, rows.length]"
            )
            if badges != claims or not claims:
                failures.append(f"scorecard: {badges} verdict badges for {claims} claims in its table")
            for page in pages:
                name = Path(page).name
                if (
                    "/chapters/" in page
                    and Path(page).stem not in GENERATED
                    and not any(h.split("#")[0].endswith(name) for h in hrefs)
                ):
                    failures.append(f"scorecard does not list the chapter {page}")
    finally:
        driver.quit()
        server.shutdown()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.check_site", description=__doc__.split("\n\n")[0])
    parser.add_argument("book_root", type=Path)
    parser.add_argument("--screenshots", type=Path, default=Path("_build/screenshots"))
    args = parser.parse_args(argv)
    failures = check_site(args.book_root, args.screenshots)
    for failure in failures:
        print(f"FAIL {failure}")
    n_pages = len(toc_pages(args.book_root))
    print(f"check_site: {n_pages} pages, {len(failures)} failures; screenshots in {args.screenshots}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
