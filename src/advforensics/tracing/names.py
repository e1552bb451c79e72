"""Names the tracing command line offers before anything heavy is imported (torch loads only when a
command runs): the score rules and the experiment's stages."""

#: How a copy's score is read from its output (see tracing/scores.py for each rule).
FORMULA_RULES = ("dol", "margin", "proximity")  # read off one shared pass, calibrated by a null
SCORE_RULES = (*FORMULA_RULES, "learned")  # learned: fitted by the seller on simulated attackers
DEFAULT_RULE = "proximity"  # for records without a fitted scorer

#: The stages of `trace experiment`, in the order they run (see tracing/experiment.py).
STAGES = ("clean", "tracing", "field", "scaling", "controls", "collusion", "peer")

__all__ = ["FORMULA_RULES", "SCORE_RULES", "DEFAULT_RULE", "STAGES"]
