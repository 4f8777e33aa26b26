"""Does attention carry the OOD behaviour? (Park §4.3): the chapter's parameters and the surgery
(``study``), the contrast example of Fig. 3 (``contrast``) and claims C7–C9 (``claims``)."""

from .claims import CLAIMS, matched_kl_ratio, surgery_claims
from .contrast import ContrastExample, attention_maps, contrast_example, last_weights, pick_contrast_prompt
from .study import PARAMETERS, SURGERIES, check_parameters, checkpoint_deltas, surgery_curves, surgery_study, transplant

__all__ = [
    "CLAIMS",
    "PARAMETERS",
    "SURGERIES",
    "ContrastExample",
    "attention_maps",
    "check_parameters",
    "checkpoint_deltas",
    "contrast_example",
    "last_weights",
    "matched_kl_ratio",
    "pick_contrast_prompt",
    "surgery_claims",
    "surgery_curves",
    "surgery_study",
    "transplant",
]
