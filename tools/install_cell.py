"""The first code cell of every chapter notebook: it installs the toolkit where it is missing.

    python -m tools.install_cell check    exit 1 naming each notebook whose cell is missing or stale
    python -m tools.install_cell write    (re)write the cell into every notebooks/*.md (then
                                          `make notebooks`, or `jupytext --sync`, pairs the .ipynb)

A chapter opened outside this repository (the Colab button, a fresh Jupyter) has no
dpo_toolkit to import. Its first cell then pip-installs the toolkit from the book's GitHub
repository; inside the repository (`make install`, Binder, the book build, nbval) the
toolkit is importable and the cell does nothing. Where torch is already installed (Colab),
it installs with --no-deps, keeping that torch and the pandas, seaborn and matplotlib beside
it. The cell is tagged remove-cell, so the book does not show it. A fork sets REPOSITORY
below to its own URL and runs `write`; `make book` fails when REPOSITORY is not the git
remote the book is built from.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/dpo-toolkit/dpo-toolkit"
MARKER = "# Outside this repository (Colab, a fresh Jupyter) install the toolkit; inside it, this cell does nothing."
HEADER = "```{code-cell} ipython3\n:tags: [remove-cell]\n\n"


def cell_source(repository: str = REPOSITORY) -> str:
    """The install cell's code for the toolkit at `repository` (an https GitHub URL)."""
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository):
        raise ValueError(f"--repository must be https://github.com/OWNER/NAME, got {repository!r}")
    return f"""{MARKER}
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("dpo_toolkit") is None:
    keep_torch = ["--no-deps"] if importlib.util.find_spec("torch") else []  # Colab: keep its torch, pandas, seaborn
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *keep_torch,
                    "dpo-toolkit @ git+{repository}"], check=True)"""


def current_cell(text: str) -> str | None:
    """The install cell's code in a notebook's MyST source, or None when it has none."""
    start = text.find(HEADER + MARKER)
    if start < 0:
        return None
    body = text[start + len(HEADER) :]
    return body[: body.index("\n```")]


def with_cell(text: str, repository: str = REPOSITORY) -> str:
    """The MyST source with the install cell (for `repository`) as its first code cell, replacing an older one."""
    block = HEADER + cell_source(repository) + "\n```\n\n"
    old = current_cell(text)
    if old is not None:
        return text.replace(HEADER + old + "\n```\n\n", block, 1)
    first = text.index("```{code-cell}")
    return text[:first] + block + text[first:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "write"])
    args = parser.parse_args(argv)
    stale = []
    for md in sorted((ROOT / "notebooks").glob("*.md")):
        text = md.read_text()
        if args.command == "write":
            md.write_text(with_cell(text))
        elif current_cell(text) != cell_source():
            stale.append(md.name)
    if stale:
        print(f"install cell missing or stale in {stale}: run `python -m tools.install_cell write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
