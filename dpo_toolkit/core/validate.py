"""Validation primitives, the bottom of the package: what a number, a list or a choice may be.

A :class:`Spec` says what one value accepts and says it in words (``describe``). The configs
(``core.config``) declare each field's range as a Spec, once; the notebook parameters
(``core.parameters``) take theirs from those fields, adding only an upper bound where a typo
could start a run of days (``Spec.capped``). Nothing here imports the rest of the package but
``core.device``, which asks torch which devices exist.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .device import resolve_device


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

    def capped(self, high: float) -> Spec:
        """This spec with an upper bound `high` (closed): a notebook's guard against a typo."""
        return dataclasses.replace(self, high=high, open_high=False)

    def as_list(self, *, unique: bool = True, scalar_ok: bool = False) -> Spec:
        """A non-empty list of values each accepted by this (number) spec."""
        kind = {"int": "ints", "real": "reals"}[self.kind]
        return dataclasses.replace(self, kind=kind, optional=False, unique=unique, scalar_ok=scalar_ok)

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


def writable_folder(path: str) -> bool:
    """`path` names a folder to write in: not blank, and a writable folder or one that can be created
    (its nearest existing ancestor is a writable folder). Looks without creating anything."""
    if not path.strip():
        return False
    full = Path(path).absolute()
    nearest = next(p for p in (full, *full.parents) if os.path.exists(p))
    return nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK)


SEED = integer(0)
"""Any seed: of a split, a run, an instance (the one range of a seed)."""


def seed_list(seeds: int | Iterable[int], name: str = "seeds") -> list[int]:
    """`seeds` as a list (one seed → [seed]); raises ValueError naming `name` unless it is a
    non-empty list of integers ≥ 0. The one check of a list of seeds."""
    listed = (
        [seeds] if SEED.accepts(seeds) else list(seeds) if isinstance(seeds, Iterable) and not isinstance(seeds, str) else None
    )
    if not listed or not all(SEED.accepts(s) for s in listed):
        raise ValueError(f"{name} must be a non-empty list of integers ≥ 0, got {seeds!r}")
    return listed
