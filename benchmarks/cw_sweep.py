"""C&W-L2 over a kappa grid: the warm-started sweep (`cw_kappa_sweep`) against independent calls.

    python benchmarks/cw_sweep.py --victim runs/attribution/victims5/resnet18.safetensors --data mnist --data-dir ../shared/data \
        --n 32 --seed 0 --json runs/bench/cw_sweep.json

Both start from the same clean test images the victim classifies correctly; kappa_scale maps the
nominal kappa 150 (1.5 x the top of the grid) to the victim's 10th-percentile reachable margin, as
`attribution corpus` does. Independent calls run at --check-kappas only (they are the slow side);
their time is extrapolated to the whole grid by the mean time per kappa. One torch thread.
Prints a Markdown table: reached rate, median achieved margin and median L2 for both, and the
per-example L2 ratio sweep / independent.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch

from advforensics.attacks import create_attack
from advforensics.attacks.cw import cw_kappa_sweep, kappa_scale_for
from advforensics.data import load_dataset
from advforensics.models import load_model
from advforensics.utils import seed_everything, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--victim", required=True)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--kappas", default=",".join(str(k) for k in range(5, 101, 5)))
    parser.add_argument("--check-kappas", default="5,25,50,75,100")
    parser.add_argument("--search-steps", type=int, default=6)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--warm-search-steps", type=int, default=2)
    parser.add_argument("--warm-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(args.seed)

    model, _ = load_model(args.victim)
    data = load_dataset(args.data, split="test", data_dir=args.data_dir)
    x, y = data.images[: 4 * args.n], data.labels[: 4 * args.n]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][: args.n], y[ok][: args.n]
    scale = kappa_scale_for(model, x, y, nominal_max=150.0)
    kappas = [float(k) for k in args.kappas.split(",")]
    checks = [float(k) for k in args.check_kappas.split(",")]
    schedule = {"kappa_scale": scale, "search_steps": args.search_steps, "steps": args.steps, "lr": args.lr}

    start = time.perf_counter()
    sweep = cw_kappa_sweep(model, x, y, kappas, warm_search_steps=args.warm_search_steps,
                           warm_steps=args.warm_steps, **schedule)
    sweep_seconds = time.perf_counter() - start

    rows, independent_seconds = [], 0.0
    for kappa in checks:
        start = time.perf_counter()
        alone = create_attack("cw-l2", kappa=kappa, **schedule)(model, x, y)
        independent_seconds += time.perf_counter() - start
        ours = sweep[kappas.index(kappa)]
        ratio = (ours.l2 / alone.l2.clamp_min(1e-12))
        rows.append({"kappa": kappa, "kappa_eff": kappa * scale,
                     "reached_sweep": float(ours.extras["reached"].float().mean()),
                     "reached_independent": float(alone.extras["reached"].float().mean()),
                     "success_sweep": ours.success_rate, "success_independent": alone.success_rate,
                     "margin_sweep": float(ours.extras["margin"].median()),
                     "margin_independent": float(alone.extras["margin"].median()),
                     "l2_sweep": float(ours.l2.median()), "l2_independent": float(alone.l2.median()),
                     "l2_ratio_median": float(ratio.median()), "l2_ratio_max": float(ratio.max())})
    independent_grid = independent_seconds / len(checks) * len(kappas)

    print(f"victim {args.victim}, {len(x)} images, kappa_scale {scale:.4f}, schedule "
          f"{args.search_steps}x{args.steps} lr {args.lr}, warm {args.warm_search_steps}x{args.warm_steps}, "
          f"{platform.machine()}, 1 thread, seed {args.seed}, {date.today()}")
    print("\n| kappa | reached sweep / indep | median margin sweep / indep | median L2 sweep / indep "
          "| L2 ratio median (max) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['kappa']:g} | {r['reached_sweep']:.3f} / {r['reached_independent']:.3f} "
              f"| {r['margin_sweep']:.2f} / {r['margin_independent']:.2f} "
              f"| {r['l2_sweep']:.3f} / {r['l2_independent']:.3f} "
              f"| {r['l2_ratio_median']:.3f} ({r['l2_ratio_max']:.3f}) |")
    reached_all = [float(r.extras["reached"].float().mean()) for r in sweep]
    print(f"\nsweep over {len(kappas)} kappas: {sweep_seconds:.1f} s ({len(x) * len(kappas) / sweep_seconds:.2f} "
          f"examples/s); independent calls: {independent_seconds:.1f} s for {len(checks)} kappas, "
          f"{independent_grid:.1f} s extrapolated to the grid; speed-up {independent_grid / sweep_seconds:.1f}x; "
          f"sweep reached rate min {min(reached_all):.3f} over the grid")
    if args.json:
        write_json(args.json, {"victim": args.victim, "n": len(x), "kappa_scale": scale, "rows": rows,
                               "sweep_seconds": sweep_seconds, "independent_seconds": independent_seconds,
                               "independent_grid_seconds": independent_grid, "sweep_reached": reached_all,
                               "args": vars(args)})


if __name__ == "__main__":
    main()
