"""The stateful detector's calibration: per buyer, on benign streams alone, and what it promises."""

from __future__ import annotations

import numpy as np
import pytest

from advforensics.errors import InputValidationError
from advforensics.serving.detection import calibrate, detect_buyer, flag_distance


def _benign(rng: np.random.Generator, n: int = 120) -> np.ndarray:
    return rng.integers(0, 256, (n, 16, 16), dtype=np.uint8)


def test_at_most_the_stated_share_of_calibration_buyers_is_flagged() -> None:
    rng = np.random.default_rng(0)
    streams = [_benign(rng) for _ in range(200)]
    config = calibrate(streams, false_flag_rate=0.01, k=5, hits_to_flag=3)
    flagged = sum(detect_buyer("b", s, config).flagged for s in streams)
    assert flagged <= 2
    assert flagged == sum(flag_distance(s, 5, 3, config.history) < config.threshold for s in streams)


def test_a_buyer_probing_around_one_image_is_flagged_early() -> None:
    rng = np.random.default_rng(1)
    config = calibrate([_benign(rng) for _ in range(200)], false_flag_rate=0.01, k=5, hits_to_flag=3)
    base = rng.integers(40, 216, (16, 16))
    probes = np.clip(base + rng.integers(-3, 4, (120, 16, 16)), 0, 255).astype(np.uint8)
    verdict = detect_buyer("mallory", probes, config)
    assert verdict.flagged and verdict.flagged_at < 10


def test_too_few_buyers_for_the_rate_is_refused() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(InputValidationError, match="at least 200"):
        calibrate([_benign(rng) for _ in range(50)], false_flag_rate=0.005)


def test_splitting_the_log_by_buyer_once_equals_one_scan_per_buyer() -> None:
    from advforensics.serving.querylog import LoggedQueries

    rng = np.random.default_rng(3)
    n = 60
    log = LoggedQueries(np.arange(n), rng.choice(["carol", "alice", "bob"], n), rng.integers(0, 3, n), rng.random(n),
                        np.array([f"r{i // 4}" for i in range(n)]), np.array(["h"] * n), _benign(rng, n),
                        rng.integers(0, 10, n))
    groups = log.by_buyer()
    assert list(groups) == ["alice", "bob", "carol"]
    for name, mine in groups.items():
        for column in log.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(mine, column), getattr(log.of(name), column))
