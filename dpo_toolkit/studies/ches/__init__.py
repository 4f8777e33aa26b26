"""Chapter 'CHES': which pairs displace (C11), filtering them (C12, C21), a toy unintentional unalignment (C13)."""

from .measures import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
