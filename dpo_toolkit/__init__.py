"""dpo_toolkit: the science behind the executable companion book on preference fine-tuning failures."""

__version__ = "0.1.0"
