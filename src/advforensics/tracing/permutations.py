"""Permutations of the tracer's K outputs that tell copies apart (pairwise agreement <= u = 1).

Why: copy i's label is decided by pi_i(T_0(x)); if two copies' permutations put the same tracer
coordinate in the same class slot more than once, an adversarial example that exploits one of them
also "explains" the other. A set of permutations of K symbols in which any two agree in at most one
position (a permutation code of minimum distance K - 1) has at most K(K-1) members, with equality
exactly when a sharply 2-transitive set exists.

Constructions, chosen per K (see `construction_name` and `max_copies`):
- K a prime power q: the affine group AGL(1, GF(q)), j -> a*j + b with a != 0: K(K-1) maps, the
  maximum. Ordered with the K translations (a = 1) first, so up to K copies agree nowhere.
- K in the searched table (6, 10, 12, 14, 15; no projective plane of order 6 or 10, so K(K-1) is
  out of reach there): a fixed list found offline by a maximum-clique search over the affine maps of
  GF(K + 1) with one point removed and remapped, extended by a randomised backtracking search
  (benchmarks/tracing_permutation_search.py). Sizes: K=6 17, K=10 30, K=12 36, K=14 44, K=15 45.
  For K = 10 the best size
  known in the literature is larger (M(10, 9) >= 49, Janiszczak et al.), found with symmetry-based
  searches not reproduced here.
- any other K: j -> a*j + b mod K with a in 1..p-1 (p the smallest prime factor of K): a - a' is a
  unit mod K, so two maps agree at most once; (p - 1) * K maps.

Past that limit (`copy_layout`): a tracer with G * K outputs is G independent tracers in one pass
(the random tracer's G * K outputs share its Fourier features and have independent output weights).
Copy i reads block b = i // M of them (M = max_copies(K)) through permutation i mod M, so copies of
one block agree pairwise in at most one position and copies of different blocks read different
outputs. Relaxing the agreement to two positions instead (720 permutations of 10 exist) would let two
copies share both tracer values of a class pair, and an example crossing that pair could not tell
them apart.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import torch

from advforensics.errors import InputValidationError
from advforensics.tracing._permutation_tables import SEARCHED_TABLES


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, n) with q = p**n and p prime, else None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    n, rest = 0, q
    while rest % p == 0:
        rest //= p
        n += 1
    return (p, n) if rest == 1 else None


def _smallest_prime_factor(k: int) -> int:
    return next(d for d in range(2, k + 1) if k % d == 0)


@lru_cache(maxsize=None)
def _gf_tables(q: int) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
    """Addition and multiplication tables of GF(q), elements coded as base-p digit vectors."""
    pp = _prime_power(q)
    if pp is None:
        raise InputValidationError(f"{q} is not a prime power")
    p, n = pp

    def digits(x: int) -> list[int]:
        return [(x // p**i) % p for i in range(n)]

    def number(d: list[int]) -> int:
        return sum(c * p**i for i, c in enumerate(d))

    def polymulmod(a: list[int], b: list[int], mod: list[int]) -> list[int]:
        prod = [0] * (2 * n - 1)
        for i, ai in enumerate(a):
            for j, bj in enumerate(b):
                prod[i + j] = (prod[i + j] + ai * bj) % p
        for deg in range(2 * n - 2, n - 1, -1):  # reduce by the monic polynomial x^n + mod
            c = prod[deg]
            if c:
                prod[deg] = 0
                for i in range(n):
                    prod[deg - n + i] = (prod[deg - n + i] - c * mod[i]) % p
        return prod[:n]

    if n == 1:
        mod = [0]
    else:  # the first monic irreducible polynomial of degree n (no roots/factors: brute force)
        for coeffs in itertools.product(range(p), repeat=n):
            mod = list(coeffs)
            if mod[0] == 0:
                continue
            # irreducible iff the multiplicative structure has no zero divisors
            ok = all(any(polymulmod(digits(a), digits(b), mod)) for a in range(1, q) for b in range(1, q))
            if ok:
                break
    add = tuple(tuple(number([(x + y) % p for x, y in zip(digits(a), digits(b))]) for b in range(q))
                for a in range(q))
    if n == 1:
        mul = tuple(tuple((a * b) % p for b in range(q)) for a in range(q))
    else:
        mul = tuple(tuple(number(polymulmod(digits(a), digits(b), mod)) for b in range(q)) for a in range(q))
    return add, mul


@lru_cache(maxsize=None)
def _all_permutations(num_outputs: int) -> tuple[tuple[int, ...], ...]:
    k = num_outputs
    if k == 1:
        return ((0,),)
    if _prime_power(k) is not None:
        add, mul = _gf_tables(k)
        return tuple(tuple(add[mul[a][j]][b] for j in range(k)) for a in range(1, k) for b in range(k))
    generic = tuple(tuple((a * j + b) % k for j in range(k))
                    for a in range(1, _smallest_prime_factor(k)) for b in range(k))
    table = SEARCHED_TABLES.get(k)
    if table is not None and len(table) > len(generic):
        return tuple(tuple(p) for p in table)
    return generic


def construction_name(num_outputs: int) -> str:
    """Which construction `make_permutations` uses for K outputs."""
    _check_k(num_outputs)
    if num_outputs == 1 or _prime_power(num_outputs) is not None:
        return "affine-gf"
    table = SEARCHED_TABLES.get(num_outputs)
    if table is not None and len(table) > (_smallest_prime_factor(num_outputs) - 1) * num_outputs:
        return "searched-table"
    return "affine-mod-k"


def max_copies(num_outputs: int) -> int:
    """The largest number of copies this module can build for K outputs (agreement <= 1)."""
    _check_k(num_outputs)
    return len(_all_permutations(num_outputs))


def _check_k(num_outputs: int) -> None:
    if not isinstance(num_outputs, int) or isinstance(num_outputs, bool) or num_outputs < 2:
        raise InputValidationError(f"num_outputs: must be an integer >= 2, got {num_outputs!r}")


def make_permutations(num_outputs: int, num_copies: int) -> torch.Tensor:
    """The first `num_copies` permutations of the construction for K = `num_outputs`.

    Returns (m, K) int64; row i maps tracer output j to class slot perm[i, j], i.e.
    T_i(x)[perm[i, j]] = T_0(x)[j]. Any two rows agree in at most one position.
    """
    _check_k(num_outputs)
    if not isinstance(num_copies, int) or isinstance(num_copies, bool) or num_copies < 1:
        raise InputValidationError(f"num_copies: must be an integer >= 1, got {num_copies!r}")
    perms = _all_permutations(num_outputs)
    if num_copies > len(perms):
        raise InputValidationError(
            f"num_copies: {num_copies} copies requested but at most {len(perms)} permutations of "
            f"{num_outputs} outputs agree pairwise in <= 1 position with the "
            f"{construction_name(num_outputs)} construction"
        )
    return torch.tensor(perms[:num_copies], dtype=torch.int64)


def tracer_blocks(num_outputs: int, num_copies: int) -> int:
    """How many K-output tracer blocks `copy_layout` needs for `num_copies` copies."""
    _check_k(num_outputs)
    return -(-int(num_copies) // max_copies(num_outputs))


def copy_layout(num_outputs: int, num_copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(permutations (m, K), blocks (m,)) for m copies of K classes, any m >= 1.

    Copy i uses permutation i mod M and tracer block i // M (M = max_copies(K)); the tracer must have
    K * tracer_blocks(K, m) outputs. For m <= M every block is 0 and the permutations are
    `make_permutations(K, m)`.
    """
    _check_k(num_outputs)
    if not isinstance(num_copies, int) or isinstance(num_copies, bool) or num_copies < 1:
        raise InputValidationError(f"num_copies: must be an integer >= 1, got {num_copies!r}")
    per_block = max_copies(num_outputs)
    table = make_permutations(num_outputs, min(num_copies, per_block))
    index = torch.arange(num_copies)
    return table[index % per_block], index // per_block


def check_layout(perms: torch.Tensor, blocks: torch.Tensor, tracer_outputs: int) -> None:
    """Raise InputValidationError unless every block's permutations agree pairwise <= 1 and every
    block exists among the tracer's `tracer_outputs` outputs (K per block)."""
    _check_rows(perms)
    k = perms.shape[1]
    if blocks.dim() != 1 or len(blocks) != len(perms):
        raise InputValidationError("tracer blocks must be one integer per copy")
    if tracer_outputs % k:
        raise InputValidationError(f"the tracer has {tracer_outputs} outputs, not a multiple of the {k} classes")
    if len(blocks) and (int(blocks.min()) < 0 or int(blocks.max()) >= tracer_outputs // k):
        raise InputValidationError(f"a copy reads tracer block {int(blocks.max())}, but the tracer's "
                                   f"{tracer_outputs} outputs hold {tracer_outputs // k} blocks of {k}")
    for block in blocks.unique().tolist():
        if max_pairwise_agreement(perms[blocks == block]) > 1:
            raise InputValidationError(f"two permutations of tracer block {block} agree in more than one position")


def max_pairwise_agreement(perms: torch.Tensor) -> int:
    """Largest number of positions in which two distinct rows of (m, K) `perms` agree (0 if m < 2)."""
    if perms.dim() != 2:
        raise InputValidationError(f"perms must have shape (m, K), got {tuple(perms.shape)}")
    if perms.shape[0] < 2:
        return 0
    agree = (perms[:, None, :] == perms[None, :, :]).sum(-1)  # (m, m)
    agree.fill_diagonal_(0)
    return int(agree.max())


def _check_rows(perms: torch.Tensor) -> None:
    if perms.dim() != 2 or perms.dtype not in (torch.int64, torch.int32):
        raise InputValidationError("permutations must be an (m, K) integer tensor")
    if not bool((perms.sort(dim=1).values == torch.arange(perms.shape[1])).all()):
        raise InputValidationError("every row must be a permutation of 0..K-1")


def check_permutations(perms: torch.Tensor) -> None:
    """Raise InputValidationError unless `perms` is (m, K) of permutations agreeing pairwise <= 1."""
    _check_rows(perms)
    if max_pairwise_agreement(perms) > 1:
        raise InputValidationError("two permutations agree in more than one position")
