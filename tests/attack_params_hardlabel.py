"""Generous parameters of the hard-label attacks for tests/test_attack_contract.py (owned by the
hard-label engineer): PARAMS = {"attack-name": {"argument": value, ...}}."""

PARAMS: dict[str, dict[str, object]] = {}
