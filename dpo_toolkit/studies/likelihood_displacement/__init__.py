"""Chapter 'Likelihood displacement' (Razin et al., arXiv 2410.08847): C10 and the talk's table."""

from .study import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
