"""Generous parameters of the hard-label attacks for tests/attacks/test_attack_contract.py (owned by the
hard-label engineer): PARAMS = {"attack-name": {"argument": value, ...}}.

Budgets are small (a few hundred queries per 8x8 example) so the contract test stays fast; each still
fools nearly every example of the tiny digits classifier.
"""

PARAMS: dict[str, dict[str, object]] = {
    "boundary": {"max_iter": 25, "num_trial": 5, "sample_size": 5, "init_size": 50, "seed": 1},
    "hopskipjump": {"max_iter": 3, "max_eval": 100, "init_eval": 10, "init_size": 50, "seed": 1},
    "hopskipjump-batched": {"max_iter": 3, "max_eval": 100, "init_eval": 10, "init_size": 50, "seed": 1},
    "signopt": {"max_queries": 120, "k": 10, "num_trial": 5, "seed": 1},
    "qeba": {"max_queries": 400, "init_eval": 20, "max_eval": 100, "init_size": 50, "seed": 1},
    "surfree": {"max_queries": 400, "init_size": 50, "seed": 1},
}
