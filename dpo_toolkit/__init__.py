"""dpo_toolkit: the science behind the executable companion book on preference fine-tuning failures.

With ``DPO_REFERENCE_KERNELS=1`` in the environment (``make test`` and ``make notebooks``
set it, with the rest of the reference kernel path: README, "Testing"), importing the
package turns oneDNN off, so that every matrix product goes through MKL, whose code path
``MKL_CBWR=COMPATIBLE`` fixes on every x86 CPU. Nothing else happens at import.
"""

import os

__version__ = "0.1.0"

if os.environ.get("DPO_REFERENCE_KERNELS") == "1":
    import torch

    torch.backends.mkldnn.enabled = False  # oneDNN's kernels follow the CPU's vector unit; no environment variable fixes them
