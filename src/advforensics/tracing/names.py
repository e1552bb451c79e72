"""Names the tracing command line offers before anything heavy is imported (torch loads only when a
command runs): the score rules and the experiment's stages."""

#: How a copy's score is read from its output (see tracing/dol.py for each rule).
SCORE_RULES = ("dol", "margin", "proximity")
DEFAULT_RULE = "proximity"

#: The stages of `trace experiment`, in the order they run (see tracing/experiment.py).
STAGES = ("clean", "tracing", "scaling", "controls", "collusion", "peer")

__all__ = ["SCORE_RULES", "DEFAULT_RULE", "STAGES"]
