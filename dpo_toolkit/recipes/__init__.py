"""Recipes several chapters share, built on the core: Park et al.'s SFT-then-DPO recipe on the
number line (``sft_then_dpo``) and the notebook parameter sets that go with it
(``parameter_sets``). A recipe imports the core only; studies import recipes, never the reverse."""
