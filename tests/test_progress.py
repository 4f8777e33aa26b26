"""Progress bars show where a reader watches and stay silent in batch runs."""

import sys
import types

import pytest

from dpo_toolkit.core import progress


class ZMQInteractiveShell:  # the name IPython's kernel shell has
    pass


@pytest.fixture
def jupyter_kernel(monkeypatch):
    fake = types.ModuleType("IPython")
    fake.get_ipython = ZMQInteractiveShell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # no widgets: the text bar


def test_batch_runs_are_silent_and_an_explicit_choice_wins(monkeypatch, jupyter_kernel):
    monkeypatch.setenv("DPO_PROGRESS", "0")
    assert progress.progress_bar(10).disable
    assert not progress.progress_bar(10, progress=True).disable  # asked for explicitly
    monkeypatch.delenv("DPO_PROGRESS")
    assert progress.progress_bar(10, progress=False).disable


def test_a_jupyter_kernel_shows_the_bar_where_a_script_without_a_terminal_does_not(monkeypatch, jupyter_kernel, capsys):
    monkeypatch.delenv("DPO_PROGRESS", raising=False)
    assert progress.in_jupyter_kernel()
    with progress.progress_bar(3, desc="DPO") as bar:
        assert not bar.disable
        bar.update(3)
    assert "DPO" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "IPython", None)  # a plain script, stderr not a terminal (pytest captures it)
    assert not progress.in_jupyter_kernel()
    assert progress.progress_bar(3).disable
