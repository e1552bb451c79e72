"""Permutations of tracer outputs: pairwise agreement <= 1 for every count up to the documented maximum."""

from __future__ import annotations

import itertools

import pytest
import torch

from advforensics.errors import InputValidationError
from advforensics.tracing.permutations import (
    _gf_tables,
    _prime_power,
    check_permutations,
    construction_name,
    make_permutations,
    max_copies,
    max_pairwise_agreement,
)

# The documented maxima of this module's constructions (see the permutations.py docstring).
DOCUMENTED = {2: 2, 3: 6, 4: 12, 5: 20, 6: 17, 7: 42, 8: 56, 9: 72, 10: 30, 11: 110, 12: 36,
              13: 156, 14: 44, 15: 45, 16: 240}


def _agreements(perms: torch.Tensor) -> torch.Tensor:
    agree = (perms[:, None, :] == perms[None, :, :]).sum(-1)
    agree.fill_diagonal_(0)
    return agree


@pytest.mark.parametrize("k", sorted(DOCUMENTED))
def test_every_count_up_to_the_maximum_agrees_at_most_once(k: int) -> None:
    assert max_copies(k) == DOCUMENTED[k]
    full = make_permutations(k, max_copies(k))
    assert full.shape == (DOCUMENTED[k], k)
    # every row is a permutation of 0..K-1
    assert torch.equal(full.sort(dim=1).values, torch.arange(k).expand(len(full), k))
    agree = _agreements(full)
    for m in range(1, max_copies(k) + 1):
        assert make_permutations(k, m).equal(full[:m])  # the first m of one fixed list
        assert int(agree[:m, :m].max()) <= 1, (k, m)
    check_permutations(full)
    with pytest.raises(InputValidationError, match="at most"):
        make_permutations(k, max_copies(k) + 1)


@pytest.mark.parametrize("k", [q for q in range(2, 33) if _prime_power(q)])
def test_prime_powers_reach_the_bound_k_times_k_minus_1(k: int) -> None:
    assert construction_name(k) == "affine-gf"
    assert max_copies(k) == k * (k - 1)
    assert max_pairwise_agreement(make_permutations(k, k * (k - 1))) <= 1


def test_ten_outputs_beats_the_generic_construction() -> None:
    assert construction_name(10) == "searched-table"
    assert max_copies(10) > 10  # generic j -> j + b mod 10 gives 10


@pytest.mark.parametrize("q", [4, 8, 9, 16, 25])
def test_gf_tables_form_a_field(q: int) -> None:
    add, mul = _gf_tables(q)
    elems = range(q)
    for a, b, c in itertools.product(elems, repeat=3):
        if (a * q + b) % 7 == c % 7:  # a subsample keeps it fast
            assert mul[a][add[b][c]] == add[mul[a][b]][mul[a][c]]
    for a in range(1, q):
        assert sum(mul[a][b] == 1 for b in elems) == 1  # a unique inverse
    assert all(add[a][0] == a and mul[a][1] == a for a in elems)


def test_first_k_copies_agree_nowhere() -> None:
    assert max_pairwise_agreement(make_permutations(11, 11)) == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_counts_are_rejected(bad: object) -> None:
    with pytest.raises(InputValidationError):
        make_permutations(10, bad)  # type: ignore[arg-type]
    with pytest.raises(InputValidationError):
        make_permutations(bad, 1)  # type: ignore[arg-type]
    with pytest.raises(InputValidationError):
        make_permutations(1, 1)  # one output cannot be permuted


def test_check_permutations_rejects_bad_sets() -> None:
    with pytest.raises(InputValidationError):
        check_permutations(torch.tensor([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(InputValidationError):
        check_permutations(torch.tensor([[0, 0, 2]]))
