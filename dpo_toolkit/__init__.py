"""dpo_toolkit: the science behind the executable companion book on preference fine-tuning failures.

Layers (docs/architecture.md): ``dpo_toolkit.core`` (configuration, data, model, losses,
metrics, training, evaluation, the experiment runner, claims), ``dpo_toolkit.studies`` (one
module or subpackage per chapter) and ``dpo_toolkit.plotting``. The names a notebook needs
most are importable from the top, ``from dpo_toolkit import DPOConfig, run_sft_then_dpo``;
they load on first use, so importing the package itself stays cheap.

With ``DPO_REFERENCE_KERNELS=1`` in the environment (``make test`` and ``make notebooks``
set it, with the rest of the reference kernel path: README, "Testing"), importing the
package turns oneDNN off, so that every matrix product goes through MKL, whose code path
``MKL_CBWR=COMPATIBLE`` fixes on every x86 CPU.
"""

import importlib
import os

__version__ = "0.1.0"

if os.environ.get("DPO_REFERENCE_KERNELS") == "1":
    import torch

    torch.backends.mkldnn.enabled = False  # oneDNN's kernels follow the CPU's vector unit; no environment variable fixes them

_EXPORTS = {
    "dpo_toolkit.core.config": ("DataConfig", "ModelConfig", "TrainConfig", "DPOConfig", "EvalConfig", "RLTaskConfig",
                                "SmallSFTConfig"),
    "dpo_toolkit.core.data": ("PairSet", "make_pairs"),
    "dpo_toolkit.core.model": ("build_model", "load_model"),
    "dpo_toolkit.core.evaluate": ("Evaluator",),
    "dpo_toolkit.core.runner": ("Member", "RunKey", "cached_model", "run_dpo"),
    "dpo_toolkit.recipes.sft_then_dpo": ("run_sft_then_dpo", "sft_reference"),
    "dpo_toolkit.core.claims": ("ClaimsTable", "results_dir", "run_cache", "write_claims", "verdict"),
}  # fmt: skip
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Load a top-level name from its module on first use (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module 'dpo_toolkit' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
