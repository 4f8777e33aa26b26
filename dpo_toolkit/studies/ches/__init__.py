"""Chapter 'CHES': which pairs displace (C11, ``identify``), filtering them (C12, C21,
``mitigation``), a toy unintentional unalignment (C13, ``safety``); the CHES score itself
is in ``measures``."""

from .parameters import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
