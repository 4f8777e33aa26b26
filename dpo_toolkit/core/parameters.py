"""Notebook parameters, checked in the reader's words before any work starts.

Each chapter module declares ``PARAMETERS``: one :class:`Spec` per variable of its
notebook's ``parameters`` cell (a test keeps the two in step). A notebook's first code
cell calls the chapter's ``check_parameters(globals())``, which checks every value
against its spec, then the rules that tie parameters together (more evaluations than
optimizer steps, a prompt too long for the model's context, …). A bad value raises
:class:`ParameterError` naming the notebook parameter and its allowed range, e.g.
``notebook parameter `beta` must be a number in (0, 1000], got -1``. A name that papermill
sets but the notebook does not have (``-p betas 0.1`` where the parameter is ``n_betas``)
stops it too, with the list of the notebook's parameters.

Every size or count has an upper bound, written once in its spec: about 10× its largest value
in the notebook defaults and ``params/paper/*.yaml``, or a rule tying it to the others (≤ the
training pairs, ≤ the optimizer steps, …). A bigger run fits; a typo (``-p n_betas 100000000``)
stops at once instead of running for days.
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd")
"""The optimizers a TrainConfig names (core.config re-exports them)."""
SFT_RECIPES = ("kl_sweep", "grokking")
"""Park's two SFT recipes (``park.sft_recipe``)."""


class ParameterError(ValueError):
    """A notebook parameter outside its allowed range."""


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Spec:
    """What one notebook parameter accepts.

    kind: 'int' or 'real' (one number), 'ints' or 'reals' (a non-empty list of them),
    'choice' (one of `choices`), 'choices' (a non-empty list of them), 'text' (any string), 'folder'
    (a folder to write in, see ``writable_folder``), 'device' (a torch device this machine has:
    'cpu', or 'cuda'/'cuda:N' where CUDA is present). low/high bound the numbers (of a
    list: every element), closed unless open_low/open_high. optional: None is allowed.
    scalar_ok: a list parameter also takes a single number. unique: list elements differ.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    optional: bool = False
    scalar_ok: bool = False
    unique: bool = False

    def _number_ok(self, x: object) -> bool:
        if not (is_int(x) if self.kind in ("int", "ints") else is_real(x)):
            return False
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        return self.high is None or (x < self.high if self.open_high else x <= self.high)

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.optional
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "choices":
            ok = isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v in self.choices for v in value)
            return bool(ok) and (not self.unique or len(set(value)) == len(value))
        if self.kind == "text":
            return isinstance(value, str)
        if self.kind == "folder":
            return isinstance(value, str) and writable_folder(value)
        if self.kind == "device":
            from .device import resolve_device

            try:
                resolve_device(value)
            except ValueError:
                return False
            return isinstance(value, str)
        if self.kind in ("int", "real"):
            return self._number_ok(value)
        if self.scalar_ok and self._number_ok(value):
            return True
        if not isinstance(value, (list, tuple)) or not value:
            return False
        return all(self._number_ok(x) for x in value) and (not self.unique or len(set(value)) == len(value))

    def _range(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f" in {'(' if self.open_low else '['}{lo:g}, {hi:g}{')' if self.open_high else ']'}"
        if lo is not None:
            return f" {'>' if self.open_low else '≥'} {lo:g}"
        if hi is not None:
            return f" {'<' if self.open_high else '≤'} {hi:g}"
        return ""

    def describe(self) -> str:
        """The allowed values in words: 'an integer ≥ 1', 'a non-empty list of numbers in (0, 1000]'."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "choices":
            text = f"a non-empty list of {'distinct ' if self.unique else ''}values from " + ", ".join(
                repr(c) for c in self.choices
            )
        elif self.kind == "text":
            text = "a string"
        elif self.kind == "folder":
            text = "the path of a folder to write in: an existing writable folder, or a new one"
            text += " whose nearest existing parent is a writable folder"
        elif self.kind == "device":
            import torch

            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            text = "'cpu', 'cuda' or 'cuda:N' naming a device this machine has"
            text += f" (CUDA devices here: {found}{', torch ' + torch.__version__ if not found else ''})"
        elif self.kind in ("int", "real"):
            text = ("an integer" if self.kind == "int" else "a number") + self._range()
        else:
            noun = "integers" if self.kind == "ints" else "numbers"
            text = f"a non-empty list of {'distinct ' if self.unique else ''}{noun}{self._range()}"
            if self.scalar_ok:
                text += " (or one such number)"
        return f"None or {text}" if self.optional else text


def integer(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Spec:
    return Spec("int", low, high, optional=optional)


def real(low=None, high=None, *, open_low=False, open_high=False, optional=False) -> Spec:
    return Spec("real", low, high, open_low, open_high, optional=optional)


def integers(low: int | None = None, high: int | None = None, *, unique: bool = True) -> Spec:
    return Spec("ints", low, high, unique=unique)


def reals(low=None, high=None, *, open_low=False, open_high=False, scalar_ok=False, unique=True) -> Spec:
    return Spec("reals", low, high, open_low, open_high, scalar_ok=scalar_ok, unique=unique)


def choice(*values: str, optional: bool = False) -> Spec:
    return Spec("choice", choices=tuple(values), optional=optional)


def choices(*values: str) -> Spec:
    """A non-empty list of distinct values, each one of `values`."""
    return Spec("choices", choices=tuple(values), unique=True)


# Shared specs, one wording for the parameters every chapter has.
SEEDS = integers(0)
RESULTS_ROOT = Spec("folder", optional=True)  # None means $DPO_RESULTS_ROOT or _build/results
DEVICE = Spec("device")  # where every model, tensor and evaluation of the chapter computes
LEARNING_RATE = real(0, 1, open_low=True)
EPOCHS = integer(1, 1000)  # passes over the data; the longest paper-profile runs take 100
STEPS = integer(1, 3000)  # full-batch optimizer steps; the longest fits take 300
MAX_BATCH = 5120  # 10× the largest batch, Park §4.1's 512
BATCH_SIZE = integer(1, MAX_BATCH)
EVALS = integer(1, 300)  # evaluations over a run; paper profile: 30
EVALS_PER_EPOCH = integer(1, 100)  # paper profile: 2
KL_SAMPLES = integer(2, 160)  # responses sampled per test prompt for a KL estimate; at most 16 in any profile
MARGIN_PAIRS = integer(1, 10_240, optional=True)  # test pairs scored for accuracy and margin (default 1024); None: all
BETA = real(0, 1000, open_low=True)  # DPOConfig.beta's range
BETAS = reals(0, 1000, open_low=True)  # a list of them


def writable_folder(path: str) -> bool:
    """`path` names a folder to write in: not blank, and a writable folder or one that can be created
    (its nearest existing ancestor is a writable folder). Looks without creating anything."""
    if not path.strip():
        return False
    full = Path(path).absolute()
    nearest = next(p for p in (full, *full.parents) if os.path.exists(p))
    return nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK)


def fail(name: str, allowed: str, value: object) -> None:
    """Raise the ParameterError of notebook parameter `name`."""
    raise ParameterError(f"notebook parameter `{name}` must be {allowed}, got {value!r}")


def injected_names(values: Mapping[str, object]) -> list[str]:
    """The names that papermill's injected cell (its source starts with '# Parameters') set, read from
    IPython's input history ``In`` in values (a notebook's ``globals()``); [] outside IPython or when
    papermill injected nothing. Papermill's own path variables (PAPERMILL_*) are left out."""
    history = values.get("In")
    cells = [c for c in history if isinstance(c, str) and c.startswith("# Parameters")] if isinstance(history, list) else []
    if not cells:
        return []
    assigns = [node for node in ast.parse(cells[-1]).body if isinstance(node, ast.Assign)]
    names = [t.id for node in assigns for t in node.targets if isinstance(t, ast.Name)]
    return [name for name in names if not name.startswith("PAPERMILL_")]


def check(specs: Mapping[str, Spec], values: Mapping[str, object], *, every: bool = True) -> None:
    """Check every parameter of specs in values (e.g. a notebook's ``globals()``), in order. With
    `every` (specs are all the notebook's parameters), a name papermill set that specs lack comes first."""
    unknown = [name for name in injected_names(values) if name not in specs] if every else []
    if unknown:
        names = ", ".join(f"`{name}`" for name in unknown)
        raise ParameterError(f"papermill set {names}, which this notebook does not have; its parameters are: {', '.join(specs)}")
    for name, spec in specs.items():
        if name not in values:
            raise ParameterError(f"notebook parameter `{name}` is not set")
        if not spec.accepts(values[name]):
            fail(name, spec.describe(), values[name])


def check_evals(name: str, n_evals: int, total_steps: int, steps_in_words: str) -> None:
    """Evaluations spread over training cannot outnumber its optimizer steps."""
    if n_evals > total_steps:
        fail(name, f"≤ {total_steps}, the optimizer steps of {steps_in_words}", n_evals)


def steps(n_items: int, batch_size: int, epochs: int = 1) -> int:
    """Optimizer steps of `epochs` passes over n_items in minibatches of batch_size."""
    return epochs * math.ceil(n_items / batch_size)
