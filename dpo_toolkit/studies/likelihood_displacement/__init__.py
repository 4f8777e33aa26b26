"""Chapter 'Likelihood displacement' (Razin et al., arXiv 2410.08847): the unconstrained-features
theory (``theory``), the persona corpus and its LM (``persona``), the LM experiments
(``study``) and C10 (``claims``)."""

from .study import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
