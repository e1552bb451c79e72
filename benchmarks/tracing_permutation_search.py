"""Search for large sets of permutations of K symbols agreeing pairwise in <= 1 position.

Used offline to build advforensics/tracing/_permutation_tables.py for K that are not prime powers.
Two starts: 'clique' = a maximum clique (networkx) among the affine maps of GF(K + 1) with the point
K removed and remapped (K + 1 prime); 'identity' = the identity alone. Each seed then greedily adds
permutations found by randomised backtracking until 30 searches in a row fail.

    python benchmarks/tracing_permutation_search.py --k 10 --start identity --seeds 23
    python benchmarks/tracing_permutation_search.py --k 6 --start clique --seeds 900
"""

from __future__ import annotations

import argparse
import json
import random
import time


def derived_affine(q: int, k: int) -> list[tuple[int, ...]]:
    """AGL(1, q) (q prime) restricted to k = q - 1 points: the image of point k is sent where k went."""
    perms = set()
    for a in range(1, q):
        for b in range(q):
            s = [(a * j + b) % q for j in range(q)]
            r = s[:k]
            if s[k] != k:
                r = [s[k] if v == k else v for v in r]
            perms.add(tuple(r))
    return sorted(perms)


def max_clique_start(k: int) -> list[tuple[int, ...]]:
    import networkx as nx

    perms = derived_affine(k + 1, k)
    graph = nx.Graph()
    graph.add_nodes_from(range(len(perms)))
    graph.add_edges_from((i, j) for i in range(len(perms)) for j in range(i + 1, len(perms))
                         if sum(x == y for x, y in zip(perms[i], perms[j])) <= 1)
    clique, _ = nx.max_weight_clique(graph, weight=None)
    return [perms[i] for i in sorted(clique)]


def find_compatible(existing: list[tuple[int, ...]], k: int, rng: random.Random,
                    budget: int = 20000) -> tuple[int, ...] | None:
    """Randomised backtracking for a permutation agreeing with each existing one at most once."""
    counts = [0] * len(existing)
    used = [False] * k
    out = [0] * k
    steps = [0]

    def dfs(j: int) -> bool:
        steps[0] += 1
        if steps[0] > budget:
            return False
        if j == k:
            return True
        values = list(range(k))
        rng.shuffle(values)
        for v in values:
            if used[v]:
                continue
            hits = [i for i, p in enumerate(existing) if p[j] == v]
            if any(counts[i] >= 1 for i in hits):
                continue
            for i in hits:
                counts[i] += 1
            used[v], out[j] = True, v
            if dfs(j + 1):
                return True
            used[v] = False
            for i in hits:
                counts[i] -= 1
        return False

    return tuple(out) if dfs(0) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--start", choices=["identity", "clique"], default="identity")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the best set as JSON here")
    args = parser.parse_args()
    start = max_clique_start(args.k) if args.start == "clique" else [tuple(range(args.k))]
    best: list[tuple[int, ...]] = []
    t0 = time.time()
    for seed in range(args.seeds):
        rng = random.Random(seed)
        found = list(start)
        fails = 0
        while fails < 30:
            p = find_compatible(found, args.k, rng)
            if p is None:
                fails += 1
            else:
                found.append(p)
                fails = 0
        if len(found) > len(best):
            best = found
            print(f"K={args.k} seed={seed} size={len(found)} ({time.time() - t0:.0f}s)", flush=True)
    print(f"best size {len(best)}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump([list(p) for p in best], handle)


if __name__ == "__main__":
    main()
