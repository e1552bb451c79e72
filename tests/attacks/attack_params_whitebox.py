"""Generous parameters for the registry-driven contract test (tests/attacks/test_attack_contract.py).

Budgets are large for the 8x8 digits so that the attacks succeed on most examples; steps are few
so the test stays fast.
"""

PARAMS: dict[str, dict[str, object]] = {
    "fgsm": {"eps": 0.3},
    "pgd-linf": {"eps": 0.3, "alpha": 0.05, "steps": 10, "random_start": True, "seed": 0},
    "pgd-l2": {"eps": 3.0, "alpha": 0.5, "steps": 10, "random_start": True, "seed": 0},
    "cw-l2": {"kappa": 1.0, "kappa_scale": 1.0, "c0": 1.0, "search_steps": 3, "steps": 50, "lr": 0.05},
    "deepfool": {"overshoot": 0.02, "max_iter": 50, "nb_grads": 10},
}
