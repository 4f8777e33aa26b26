"""Chapter 'Vanishing gradients in RL fine-tuning' (Razin et al., ICLR 2024): C14–C16."""

from .study import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
