"""Attack registry: white-box (FGSM, PGD, C&W, DeepFool) and hard-label query attacks behind one contract."""

from advforensics.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    Norm,
    ThreatModel,
    create_attack,
    list_attacks,
)

# Importing the modules registers their attacks.
from advforensics.attacks import fgsm, pgd, cw, deepfool  # noqa: E402,F401
from advforensics.attacks import boundary, hopskipjump, hopskipjump_batched, signopt, qeba, surfree  # noqa: E402,F401

__all__ = ["ATTACKS", "Attack", "AttackResult", "Norm", "ThreatModel", "create_attack", "list_attacks"]
