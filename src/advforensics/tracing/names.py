"""Names the tracing command line offers before anything heavy is imported (torch loads only when a
command runs): the score rules and the experiment's stages, as plain strings built from
`advforensics.vocab` (ScoreRule, Stage)."""

from advforensics.vocab import ScoreRule, Stage

#: How a copy's score is read from its output (see tracing/scores.py for each rule).
FORMULA_RULES = ScoreRule.formula_values()  # read off one shared pass, calibrated by a null
SCORE_RULES = ScoreRule.values()  # FORMULA_RULES, then learned: fitted by the seller on simulated attackers
DEFAULT_RULE = ScoreRule.PROXIMITY.value  # for records without a fitted scorer

#: The stages of `trace experiment`, in the order they run (see studies/tracing.py).
STAGES = Stage.values()

__all__ = ["FORMULA_RULES", "SCORE_RULES", "DEFAULT_RULE", "STAGES"]
