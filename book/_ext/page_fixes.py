"""The book's own styles and script, and two fixes for its pages, found by its headless-browser
check (tools/check_site.py).

- static/book.css and static/book.js: tables wider than their column stacked one card per row,
  inline code that breaks rather than widening a phone's page, every figure a link to its
  full-size image.
- The launch buttons (Binder, Colab) of a chapter open its notebook in notebooks/, the one in
  the repository: the theme would link the page's own path, book/chapters/<stem>.ipynb, a copy
  that exists only in the build.

- sphinx-thebe 0.3.1 under Sphinx 7 puts its inline configuration script on every page
  twice, and the second `const THEBE_JS_URL` is a JavaScript SyntaxError. Keep the first.
- The pydata theme logs "invalid theme mode" when its `default_mode` template variable
  is empty, as sphinx-book-theme leaves it; set "auto", the mode it falls back to anyway.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).parent / "static"
BUILT_CHAPTERS = "book/chapters/"  # where the build reads the executed chapters; not in the repository
SOURCE_CHAPTERS = "notebooks/"  # where their notebooks are in the repository


def _fix_page(app, pagename, templatename, context, doctree) -> None:
    context["default_mode"] = context.get("default_mode") or "auto"
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def launch_to_sources(header_buttons: list[dict]) -> None:
    """Point the launch buttons' links at the chapter's notebook in notebooks/ (in place)."""
    for group in header_buttons:
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons", []):
            if "url" in button:
                button["url"] = button["url"].replace(BUILT_CHAPTERS, SOURCE_CHAPTERS)


def _launch_links(app, pagename, templatename, context, doctree) -> None:
    launch_to_sources(context.get("header_buttons", []))


def _static(app) -> None:
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("builder-inited", _static)
    app.add_css_file("book.css")
    app.add_js_file("book.js")
    app.connect("html-page-context", _launch_links, priority=502)  # after the theme made its launch buttons (501)
    app.connect("html-page-context", _fix_page, priority=900)  # after the themes have filled the context
    return {"parallel_read_safe": True, "parallel_write_safe": True}
