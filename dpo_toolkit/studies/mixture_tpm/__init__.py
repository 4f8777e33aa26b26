"""Chapter 'Mixture TPM theorem': Lemma 1 and Theorem 2 on random instances (``theory``), and the
unaligned mass of trained policies (``policy``): C17–C20 (``claims``)."""

from .parameters import PARAMETERS, check_parameters

__all__ = ["PARAMETERS", "check_parameters"]
