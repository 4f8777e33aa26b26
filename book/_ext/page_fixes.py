"""Two fixes for pages of this book, found by its headless-browser check (tools/check_site.py).

- sphinx-thebe 0.3.1 under Sphinx 7 puts its inline configuration script on every page
  twice, and the second `const THEBE_JS_URL` is a JavaScript SyntaxError. Keep the first.
- The pydata theme logs "invalid theme mode" when its `default_mode` template variable
  is empty, as sphinx-book-theme leaves it; set "auto", the mode it falls back to anyway.
"""

from __future__ import annotations


def _fix_page(app, pagename, templatename, context, doctree) -> None:
    context["default_mode"] = context.get("default_mode") or "auto"
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _fix_page, priority=900)  # after the themes have filled the context
    return {"parallel_read_safe": True, "parallel_write_safe": True}
