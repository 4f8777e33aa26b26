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

A parameter that sets a config field takes that field's range from the config (``FIELDS``),
so each range is written once; the specs themselves are ``core.validate``'s. Every size or count
has an upper bound, written once in its spec: about 10× its largest value
in the notebook defaults and ``params/paper/*.yaml``, or a rule tying it to the others (≤ the
training pairs, ≤ the optimizer steps, …). A bigger run fits; a typo (``-p n_betas 100000000``)
stops at once instead of running for days.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping

from .config import DPOConfig, EvalConfig, TrainConfig
from .validate import SEED, Spec, integer


class ParameterError(ValueError):
    """A notebook parameter outside its allowed range."""


# Shared specs, one wording for the parameters every chapter has; a config field's range comes
# from the config, and a notebook adds only its cap against typos.
SEEDS = SEED.as_list()
RESULTS_ROOT = Spec("folder", optional=True)  # None means $DPO_RESULTS_ROOT or _build/results
DEVICE = Spec("device")  # where every model, tensor and evaluation of the chapter computes
LEARNING_RATE = TrainConfig.FIELDS["lr"]
EPOCHS = TrainConfig.FIELDS["epochs"].capped(1000)  # passes over the data; the longest paper-profile runs take 100
STEPS = integer(1, 3000)  # full-batch optimizer steps; the longest fits take 300
MAX_BATCH = 5120  # 10× the largest batch, Park §4.1's 512
BATCH_SIZE = TrainConfig.FIELDS["batch_size"].capped(MAX_BATCH)
EVALS = TrainConfig.FIELDS["n_evals"].capped(300)  # evaluations over a run; paper profile: 30
EVALS_PER_EPOCH = integer(1, 100)  # paper profile: 2
KL_SAMPLES = EvalConfig.FIELDS["kl_samples"].capped(160)  # responses per test prompt for a KL estimate; ≤ 16 in any profile
MARGIN_PAIRS = EvalConfig.FIELDS["max_pairs"].capped(10_240)  # test pairs scored for accuracy and margin; None: all
BETA = DPOConfig.FIELDS["beta"]
BETAS = BETA.as_list()


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
