"""Chapter 'When does DPO drift?': the map's design (``design``), its runs (``runs``) and
their analysis with claims C22–C24 (``analysis``)."""

from .design import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
