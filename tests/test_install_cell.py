"""The notebooks' first cell: installs the toolkit outside the repository, does nothing inside it."""

import importlib.util
import subprocess
import sys

import pytest

from tools import install_cell


def _run_cell(monkeypatch, present: set[str]) -> list[list[str]]:
    """Execute the install cell as a kernel would, with only `present` of dpo_toolkit/torch importable; the pip calls it made."""
    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in present else None)
    monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
    exec(install_cell.cell_source(), {})
    return calls


def test_every_notebook_starts_with_the_current_install_cell():
    assert install_cell.main(["check"]) == 0


def test_the_cell_installs_only_outside_the_repository_and_keeps_colabs_torch(monkeypatch):
    assert _run_cell(monkeypatch, {"dpo_toolkit", "torch"}) == []  # inside the repository: nothing
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    source = f"dpo-toolkit @ git+{install_cell.REPOSITORY}"
    assert _run_cell(monkeypatch, {"torch"}) == [[*pip, "--no-deps", source]]  # Colab: torch is there
    assert _run_cell(monkeypatch, set()) == [[*pip, source]]  # a bare Jupyter: pip brings the dependencies


def test_writing_the_cell_puts_it_first_and_replaces_an_older_one():
    text = "# Title\n\nSome text.\n\n```{code-cell} ipython3\n:tags: [parameters]\n\nx: int = 1\n```\n"
    once = install_cell.with_cell(text)
    assert once.index(install_cell.MARKER) < once.index(":tags: [parameters]") and once.startswith("# Title")
    assert install_cell.with_cell(once) == once  # idempotent
    moved = install_cell.with_cell(once, "https://github.com/someone/fork")
    assert moved.count(install_cell.MARKER) == 1 and "git+https://github.com/someone/fork" in moved
    assert install_cell.current_cell(moved) == install_cell.cell_source("https://github.com/someone/fork")
    with pytest.raises(ValueError, match=r"https://github\.com/OWNER/NAME"):
        install_cell.cell_source("git@github.com:someone/fork.git")
