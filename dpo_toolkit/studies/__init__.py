"""One module or subpackage per chapter: its parameters, its experiment and the rules of its claims.

A study imports ``dpo_toolkit.core`` and never another study."""
