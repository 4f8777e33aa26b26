"""Progress bars: shown in an interactive Jupyter session and on a terminal, silent in batch runs.

A long training loop shows a bar where a reader is watching: in a Jupyter kernel (the widget
bar of ``tqdm.notebook`` when ipywidgets is installed, else tqdm's text bar) and on a terminal.
It stays silent where nobody is: in the built book (papermill), under nbval, in CI logs and
in any process whose environment sets ``DPO_PROGRESS=0`` (the Makefile and tools/bookbuild.py
set it). An explicit ``progress=True`` or ``False`` overrides all of this.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def in_jupyter_kernel() -> bool:
    """Whether this process is an IPython kernel that a front end (Jupyter, Colab) talks to."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(total: int, initial: int = 0, desc: str | None = None, progress: bool | None = None) -> tqdm:
    """A tqdm bar over `total` steps starting at `initial`; shown when `progress` is True, hidden when
    False, and when None: hidden if $DPO_PROGRESS is "0", else shown in a Jupyter kernel or on a terminal."""
    if progress is None and os.environ.get("DPO_PROGRESS") == "0":
        progress = False
    if progress is False:
        return tqdm(total=total, initial=initial, desc=desc, disable=True)
    if in_jupyter_kernel():
        from tqdm import notebook

        if notebook.IProgress is not None:  # ipywidgets is installed: the widget bar
            return notebook.tqdm(total=total, initial=initial, desc=desc, leave=False)
        return tqdm(total=total, initial=initial, desc=desc, leave=False, file=sys.stderr)  # Jupyter redraws it in place
    # on a terminal when progress is None (tqdm's disable=None: shown only on a TTY)
    return tqdm(total=total, initial=initial, desc=desc, leave=False, disable=None if progress is None else False)
