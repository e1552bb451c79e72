"""Attack-corpus generation for passive attribution (MTAA, Guo et al. arXiv 2302.14059).

The corpus's on-disk format, its verification and its reader are in `advforensics.attribution.corpus`;
this module makes corpora in that format.

A work unit is (victim, attack, chunk of clean images); every hyperparameter value of the attack is
run on the chunk inside the unit (FGSM from one shared gradient). A unit's files are written
atomically, then its record, `shards/<unit>.entry.json`; the writer folds the records into the
manifest every COMMIT_SECONDS and at the end. An interrupted run resumes without duplicates or
losses: a unit is done iff the manifest or its record lists it and its files still hash to the
recorded sha256; anything else is regenerated from its own deterministic seed.

Under torchrun the ranks take the units on demand (`Ranks.take`; every unit keeps its own seed, so the
corpus is byte-identical to a one-process run whoever makes which unit). Rank 0 alone holds the lock and writes the manifest, folding
in every rank's records; a killed rank loses only the unit it was making.

Evidence is quantised to 8 bits by default: float evidence leaks the attack (FGSM stays on the 1/255
grid, PGD and C&W do not) and FGSM's epsilon (the most frequent pixel change). Success is re-checked
on the quantised image; only successful examples are kept, and every grid cell's success rate is
recorded so that dropped cells are visible.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from advforensics.attribution.corpus import (CLEAN_FILE, COLUMNS, FORMAT, LOCK_FILE, MANIFEST, SHARDS, VERSION,
                                             _corpus_id, _inside, _npz_bytes, _read_manifest, _read_unit,
                                             _unit_files, _write_unit, victim_architectures)
from advforensics import distributed
from advforensics.attribution.grid import CLEAN, AttackSpec, GridSpec
from advforensics.errors import AdvForensicsError, DataFileError, InputValidationError
from advforensics.utils import (atomic_write_bytes, check_images, check_labels, module_device, resolve_device,
                                sha256_bytes, sha256_file, write_json)
from advforensics.vocab import Implementation

log = logging.getLogger(__name__)


@dataclass
class CorpusConfig:
    """How a corpus is generated (stored in the manifest; resuming requires the same values).

    shard_images: clean images per work unit. batch_size: attack batch. quantize: 8-bit evidence.
    victim_params: per-victim, per-attack extra keyword arguments, e.g. a C&W kappa scale
        {"resnet18": {"cw-l2": {"kappa_scale": 0.1}}} (kappa must be scaled to a victim's logits).
    keep_unreached: also store C&W examples that fool the victim without reaching their kappa (their
        `reached` column is False); by default only examples that hold their stated strength are kept.
    """

    shard_images: int = 256
    batch_size: int = 128
    quantize: bool = True
    seed: int = 0
    victim_params: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    keep_unreached: bool = False

    def __post_init__(self) -> None:
        if self.shard_images < 1:
            raise InputValidationError(f"shard_images must be >= 1, got {self.shard_images}")
        if self.batch_size < 1:
            raise InputValidationError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class CellResult:
    """One hyperparameter value of one attack on one victim over a batch of clean images."""

    hyper: float
    x_adv: torch.Tensor  # (B, C, H, W) in [0, 1]; the corpus measures success and kappa on it itself


#: Signature of an attack runner: (spec, model, x, y, seed, extra params) -> one CellResult per value.
AttackRunner = Callable[[AttackSpec, nn.Module, torch.Tensor, torch.Tensor, int, dict[str, Any]], list[CellResult]]


def run_grid_attack(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                    extra: dict[str, Any]) -> list[CellResult]:
    """Run every hyperparameter value of `spec` on (x, y), with the project's attacks or ART's.

    FGSM uses `fgsm_multi_eps`: one gradient serves all epsilons (bit-identical to separate calls).
    C&W with `warm_search_steps`/`warm_steps` among its params uses `cw_kappa_sweep`: each kappa
    continues from the next smaller one's examples (not bit-identical; benchmarks/cw_sweep.py).
    PGD's step is `alpha_ratio` * eps (default 0.25) or a fixed `alpha255` / 255.
    """
    from advforensics.attacks import create_attack
    from advforensics.attacks.cw import cw_kappa_sweep
    from advforensics.attacks.fgsm import fgsm_multi_eps

    params = {**spec.params, **extra}
    if spec.implementation == Implementation.ART:
        from advforensics.attribution.art_runner import run_art_values

        return [CellResult(v, x_adv) for v, x_adv in
                zip(spec.values, run_art_values(spec.name, spec.values, params, model, x, y, seed))]
    if spec.name == "fgsm":
        results = fgsm_multi_eps(model, x, y, [v / 255.0 for v in spec.values])
        return [CellResult(v, r.x_adv) for v, r in zip(spec.values, results)]
    if spec.name == "cw-l2" and ("warm_search_steps" in params or "warm_steps" in params):
        results = cw_kappa_sweep(model, x, y, [float(v) for v in spec.values], **params)
        return [CellResult(v, r.x_adv) for v, r in zip(spec.values, results)]
    out = []
    for value in spec.values:
        if spec.name == "pgd-linf":
            p = dict(params)
            eps = value / 255.0
            alpha = float(p.pop("alpha255")) / 255.0 if "alpha255" in p else float(p.pop("alpha_ratio", 0.25)) * eps
            p.pop("alpha_ratio", None)
            result = create_attack("pgd-linf", eps=eps, alpha=alpha, seed=seed, **p)(model, x, y)
            out.append(CellResult(value, result.x_adv))
        elif spec.name == "deepfool":
            out.append(CellResult(value, create_attack("deepfool", **params)(model, x, y).x_adv))
        elif spec.name == "cw-l2":
            out.append(CellResult(value, create_attack("cw-l2", kappa=float(value), **params)(model, x, y).x_adv))
        else:  # pragma: no cover - AttackSpec validates names
            raise InputValidationError(f"no runner for attack {spec.name!r} in {spec.implementation}")
    return out


#: arguments the grid sets itself (the cell's value, PGD's step, the seed) or that the runner reads itself
_SET_BY_GRID = {"fgsm": {"eps"}, "pgd-linf": {"eps", "alpha", "seed"}, "cw-l2": {"kappa"}, "deepfool": set()}
_RUNNER_KEYS = {"pgd-linf": {"alpha_ratio", "alpha255"}, "cw-l2": {"warm_search_steps", "warm_steps"}}


def check_grid_params(grid: GridSpec, model: nn.Module, x: torch.Tensor, extra: Mapping[str, Any]) -> None:
    """Every grid attack's params are ones its implementation takes, checked before anything is written: the
    project's against the attack's arguments, ART's by building the ART attack once (nothing is run)."""
    from advforensics.attacks import create_attack
    from advforensics.attacks.base import ATTACKS

    for spec in grid.attacks:
        params = {**spec.params, **extra.get(spec.name, {})}
        where = f"grid attack {spec.key!r}"
        if spec.implementation == Implementation.ART:
            from advforensics.attribution.art_runner import art_classifier, make_art_attack

            try:
                make_art_attack(spec.name, art_classifier(model, x[:1]), float(spec.values[0]), params, batch_size=1)
            except (TypeError, ValueError) as error:
                raise InputValidationError(f"{where}: ART rejects its params {params}: {error}") from None
            continue
        if spec.name == "fgsm":  # one gradient serves every eps (fgsm_multi_eps): nothing else to set
            allowed: set[str] = set()
        else:
            arguments = set(inspect.signature(ATTACKS.get(spec.name).__init__).parameters) - {"self"}
            allowed = (arguments - _SET_BY_GRID[spec.name]) | _RUNNER_KEYS.get(spec.name, set())
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise InputValidationError(f"{where} has params {unknown} that {spec.name} does not take; it takes "
                                       f"{', '.join(sorted(allowed)) or 'none'}")
        own = {k: v for k, v in params.items() if k not in _RUNNER_KEYS.get(spec.name, set())}
        value = {"pgd-linf": {"eps": 8 / 255, "alpha": 2 / 255}, "cw-l2": {"kappa": 0.0}}.get(spec.name, {})
        if spec.name != "fgsm":
            create_attack(spec.name, **own, **value)  # the attack's own checks of its values


# ----------------------------------------------------------------------------------------------
# evidence helpers


def _unit_seed(seed: int, unit_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{unit_id}".encode()).hexdigest()[:8], 16)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> the nearest 8-bit level, still float in [0, 1]."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def _to_storage(x: torch.Tensor, quantize: bool) -> np.ndarray:
    if quantize:
        return torch.round(x.clamp(0, 1) * 255.0).to(torch.uint8).cpu().numpy()
    return x.detach().float().cpu().numpy()


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's logits on CPU images `x`, computed on the model's device, returned on the CPU."""
    device = module_device(model)
    with torch.no_grad():
        return torch.cat([model(chunk.to(device)).float().cpu() for chunk in x.split(batch_size)]) if len(x) \
            else torch.empty(0)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """best other logit - true logit  # (B,)"""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


# ----------------------------------------------------------------------------------------------
# generation


@dataclass
class CorpusReport:
    """What `generate_corpus` did: units made/reused/regenerated, cell success rates, throughput."""

    path: Path
    units_total: int
    units_generated: list[str]
    units_reused: list[str]
    units_regenerated: list[str]
    n_examples: int
    cells: list[dict[str, Any]]  # attack, victim, hyper, attempted, succeeded, success_rate, reached
    empty_cells: list[dict[str, Any]]
    throughput: list[dict[str, Any]]  # victim, attack, attack_runs, seconds, images_per_s
    corpus_id: str

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["path"] = str(self.path)
        return payload


def _plan_units(victims: Sequence[str], grid: GridSpec, n_clean: int, shard_images: int
                ) -> list[tuple[str, str, str, int, int]]:
    """(unit_id, victim, attack variant key, start, stop) for every work unit, in generation order."""
    chunks = [(start, min(start + shard_images, n_clean)) for start in range(0, n_clean, shard_images)]
    plan = []
    for k, (start, stop) in enumerate(chunks):
        if grid.include_clean:
            plan.append((f"{CLEAN}__{CLEAN}__{k:05d}", CLEAN, CLEAN, start, stop))
    for victim in victims:
        for spec in grid.attacks:
            for k, (start, stop) in enumerate(chunks):
                plan.append((f"{victim}__{spec.key}__{k:05d}", victim, spec.key, start, stop))
    return plan


def _check_victim_names(victims: Mapping[str, nn.Module]) -> None:
    if not victims:
        raise InputValidationError("at least one victim model is needed")
    for name in victims:
        if not name or "__" in name or "/" in name or "\\" in name or ".." in name or name == CLEAN:
            raise InputValidationError(f"invalid victim name {name!r} (no '__', '/', '\\', '..', or 'clean')")


def _assign_values(n_images: int, n_values: int, per_image: int | None, seed: int) -> np.ndarray:
    """(n_images, n_values) bool: which values each image is attacked with (all, or `per_image` at random)."""
    if per_image is None or per_image >= n_values:
        return np.ones((n_images, n_values), bool)
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n_images, n_values)), axis=1)[:, :per_image]
    mask = np.zeros((n_images, n_values), bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


def _draws_variant(grid: GridSpec, spec: AttackSpec, victim: str, clean_index: np.ndarray, seed: int) -> np.ndarray:
    """(B,) bool: which clean images draw `spec` among its family's variants on `victim` (one each)."""
    keys = [a.key for a in grid.variants_of(spec.name)]
    draws = np.array([int(hashlib.sha256(f"{seed}:{victim}:{spec.name}:{i}".encode()).hexdigest()[:8], 16) % len(keys)
                      for i in clean_index])
    return draws == keys.index(spec.key)


class _Rows:
    """Column lists of one unit's stored rows."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.cols: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}

    def add(self, images: np.ndarray, **columns: Any) -> None:
        n = len(images)
        if n == 0:
            return
        self.images.append(images)
        for name, dtype in COLUMNS.items():
            value = columns[name]
            if dtype is object:
                array = np.array(list(value) if isinstance(value, (list, np.ndarray)) else [value] * n, dtype=object)
            else:
                array = np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()
            self.cols[name].append(array)

    def stacked(self, shape: tuple[int, ...], quantize: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        dtype = np.uint8 if quantize else np.float32
        images = np.concatenate(self.images) if self.images else np.zeros((0, *shape), dtype)
        columns = {name: (np.concatenate(parts) if parts else np.zeros(0, dtype=COLUMNS[name]))
                   for name, parts in self.cols.items()}
        return images, columns


def _clean_unit(x: torch.Tensor, y: torch.Tensor, pos: np.ndarray, indices: np.ndarray, grid: GridSpec,
                config: CorpusConfig, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The clean images as they are, and once per benign change (all labelled "clean")."""
    from advforensics.evidence.transforms import reencode

    rows = _Rows()
    for change in ("none", *grid.benign):
        changed = reencode(x, change, seed=seed) if change != "none" else x
        delta = (changed - x).flatten(1)
        rows.add(_to_storage(changed, config.quantize), clean_pos=pos, clean_index=indices[pos],
                 clean_label=y.numpy(), attack=CLEAN, variant=change, implementation="",
                 params=json.dumps({"change": change, "seed": seed}), victim=CLEAN, victim_arch=CLEAN, hyper=0.0,
                 success=False, predicted=y.numpy(), l2=delta.norm(dim=1).numpy(), linf=delta.abs().amax(dim=1).numpy(),
                 margin=np.nan, reached=True)
    return rows.stacked(tuple(x.shape[1:]), config.quantize)


def _generate_unit(unit: tuple[str, str, str, int, int], grid: GridSpec, victims: Mapping[str, nn.Module],
                   arch: Mapping[str, str], x_all: torch.Tensor, y_all: torch.Tensor, indices: np.ndarray,
                   config: CorpusConfig, runner: AttackRunner
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], list[dict[str, Any]], int]:
    """Make one unit's evidence and label rows; return (images, columns, cell stats, attack runs).

    A row is stored when the stored (quantised) image fools the victim and, for C&W, the attack's own
    output holds the stated kappa (unless `config.keep_unreached`).
    """
    unit_id, victim, key, start, stop = unit
    x, y = x_all[start:stop], y_all[start:stop]  # (B, C, H, W), (B,)
    pos = np.arange(start, stop, dtype=np.int64)
    seed = _unit_seed(config.seed, unit_id)
    if key == CLEAN:
        stacked, columns = _clean_unit(x, y, pos, indices, grid, config, seed)
        return stacked, columns, [], 0
    model = victims[victim]
    spec = grid.variant(key)
    torch.manual_seed(seed)
    extra = config.victim_params.get(victim, {}).get(spec.name, {})
    kappa_scale = float({**spec.params, **extra}.get("kappa_scale", 1.0))
    clean_pred = _logits(model, x, config.batch_size).argmax(dim=1)
    correct = clean_pred == y  # attack only images the victim gets right
    if grid.variants_per_image == 1:  # and only those that drew this variant of the family
        correct &= torch.from_numpy(_draws_variant(grid, spec, victim, indices[pos], config.seed))
    xc, yc, pc = x[correct], y[correct], pos[correct.numpy()]
    assigned = _assign_values(len(xc), len(spec.values), grid.values_per_image, seed)  # (n, V)
    rows = _Rows()
    stats: dict[float, dict[str, Any]] = {float(v): {"attack": spec.name, "variant": spec.key, "victim": victim,
                                                     "hyper": float(v), "attempted": 0, "succeeded": 0, "reached": 0,
                                                     "stored": 0} for v in spec.values}
    runs = 0
    device = module_device(model)
    # one runner call per value group: images assigned the same values run together
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(assigned):
        groups.setdefault(tuple(np.flatnonzero(row)), []).append(i)
    for value_ids, members in sorted(groups.items()):
        sub_spec = AttackSpec(spec.name, tuple(spec.values[j] for j in value_ids), spec.params, spec.variant,
                              spec.implementation) if len(value_ids) < len(spec.values) else spec
        member_idx = np.asarray(members)
        for b0 in range(0, len(member_idx), config.batch_size):
            take = member_idx[b0:b0 + config.batch_size]
            xb, yb, pb = xc[take], yc[take], pc[take]
            batch_seed = seed + int(take[0]) + 7919 * len(value_ids)
            cells = runner(sub_spec, model, xb.to(device), yb.to(device), batch_seed, extra)
            runs += len(xb) * len(cells)
            for cell in cells:
                x_float = cell.x_adv.detach().cpu().clamp(0, 1)
                x_adv = _quantise(x_float) if config.quantize else x_float  # (b, C, H, W)
                logits = _logits(model, x_adv, config.batch_size)
                pred = logits.argmax(dim=1)
                ok = pred != yb
                if spec.name == "cw-l2":  # the attack's own output must hold the stated margin
                    reached = _margin(_logits(model, x_float, config.batch_size), yb) >= \
                        float(cell.hyper) * kappa_scale - 1e-6
                else:
                    reached = torch.ones_like(ok)
                keep = ok & (reached | config.keep_unreached)
                st = stats[float(cell.hyper)]
                st["attempted"] += int(len(xb))
                st["succeeded"] += int(ok.sum())
                st["reached"] += int((reached & ok).sum())
                st["stored"] += int(keep.sum())
                if not keep.any():
                    continue
                k = keep.numpy()
                delta = (x_adv - xb).flatten(1)
                params = json.dumps({**spec.params, **extra, "value": float(cell.hyper), "seed": batch_seed,
                                     "implementation": spec.implementation, "variant": spec.key}, sort_keys=True,
                                    default=str)
                rows.add(_to_storage(x_adv[keep], config.quantize), clean_pos=pb[k], clean_index=indices[pb[k]],
                         clean_label=yb[keep].numpy(), attack=spec.name, variant=spec.key,
                         implementation=spec.implementation, params=params, victim=victim, victim_arch=arch[victim],
                         hyper=float(cell.hyper), success=True, predicted=pred[keep].numpy(),
                         l2=delta.norm(dim=1)[keep].numpy(), linf=delta.abs().amax(dim=1)[keep].numpy(),
                         margin=_margin(logits, yb)[keep].numpy(), reached=reached[keep].numpy())
    stacked, columns = rows.stacked(tuple(x.shape[1:]), config.quantize)
    cell_stats = []
    for st in stats.values():
        st["success_rate"] = st["succeeded"] / st["attempted"] if st["attempted"] else 0.0
        cell_stats.append(st)
    return stacked, columns, cell_stats, runs


def _aggregate_cells(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    totals: dict[tuple[str, str, float], dict[str, Any]] = {}
    for entry in manifest["units"].values():
        for cell in entry.get("cells", []):
            variant = cell.get("variant", cell["attack"])
            key = (cell["victim"], variant, float(cell["hyper"]))
            agg = totals.setdefault(key, {"victim": key[0], "attack": cell["attack"], "variant": variant,
                                          "hyper": key[2], "attempted": 0, "succeeded": 0, "reached": 0,
                                          "stored": 0})
            for name in ("attempted", "succeeded", "reached", "stored"):
                agg[name] += int(cell.get(name, 0))
    out = []
    for agg in totals.values():
        agg["success_rate"] = agg["succeeded"] / agg["attempted"] if agg["attempted"] else 0.0
        out.append(agg)
    return sorted(out, key=lambda c: (c["victim"], c["variant"], c["hyper"]))


def _aggregate_throughput(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for unit_id, entry in manifest["units"].items():
        victim, attack = unit_id.split("__")[:2]
        if attack == CLEAN:
            continue
        agg = totals.setdefault((victim, attack), {"victim": victim, "attack": attack, "attack_runs": 0, "seconds": 0.0})
        agg["attack_runs"] += int(entry.get("attack_runs", 0))
        agg["seconds"] += float(entry.get("seconds", 0.0))
    for agg in totals.values():
        agg["images_per_s"] = agg["attack_runs"] / agg["seconds"] if agg["seconds"] > 0 else None
    return sorted(totals.values(), key=lambda t: (t["victim"], t["attack"]))


def _lock_holder(fd: int) -> str:
    """The pid in a lock file held by another writer (it writes it just after taking the lock: wait a moment)."""
    for _ in range(50):
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if holder:
            return holder
        time.sleep(0.01)
    return "unknown"


@contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the corpus folder: two writers would each generate every unit."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputValidationError(f"corpus {root} is being written by another process (pid {_lock_holder(fd)}); "
                                       "wait for it to finish, then rerun with --resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (harmless, and removing it would race a new writer)


#: a rank's record of one finished unit, beside its files, until rank 0 folds it into the manifest
ENTRY_SUFFIX = ".entry.json"
#: how often rank 0 rewrites the manifest while units are made (each rewrite serialises every entry so
#: far: once per unit made the writes grew with the square of the corpus)
COMMIT_SECONDS = 10.0


def _entry_files(root: Path) -> list[Path]:
    shards = root / SHARDS
    return sorted(shards.glob(f"*{ENTRY_SUFFIX}")) if shards.is_dir() else []


def _fold_entries(root: Path, manifest: dict[str, Any], own: dict[str, dict[str, Any]], plan_ids: set[str]
                  ) -> list[str]:
    """Add rank 0's `own` new entries (emptied) and every other unit entry file of this plan whose files
    verify to `manifest`; return the ids whose entry files may go once the manifest is written."""
    manifest["units"].update(own)
    folded = list(own)
    own.clear()
    shape = tuple(manifest["image_shape"])
    for path in _entry_files(root):
        unit_id = path.name[:-len(ENTRY_SUFFIX)]
        if unit_id in manifest["units"]:
            folded.append(unit_id)
            continue
        try:
            if unit_id not in plan_ids:
                raise DataFileError("no unit of this corpus has that name")
            entry = json.loads(path.read_text())
            _read_unit(root, unit_id, entry, shape)
        except (OSError, ValueError, DataFileError, AttributeError) as error:
            log.warning("unit %s: its record does not match its files (%s); regenerating it", unit_id, error)
            path.unlink(missing_ok=True)
            continue
        manifest["units"][unit_id] = entry
        folded.append(unit_id)
    return folded


def _commit(root: Path, manifest: dict[str, Any], own: dict[str, dict[str, Any]], plan_ids: set[str],
            last: bool = False) -> None:
    """Fold the finished units' entries into the manifest and write it; then the entry files go.
    last: the run's final write, with its completeness, cell totals, throughput and corpus id."""
    folded = _fold_entries(root, manifest, own, plan_ids)
    if last:
        manifest["complete"] = all(unit_id in manifest["units"] for unit_id in plan_ids)
        manifest["cells"] = _aggregate_cells(manifest)
        manifest["throughput"] = _aggregate_throughput(manifest)
        manifest["corpus_id"] = _corpus_id(manifest) if manifest["complete"] else None
    write_json(root / MANIFEST, manifest)
    for unit_id in folded:
        (root / SHARDS / f"{unit_id}{ENTRY_SUFFIX}").unlink(missing_ok=True)


def _is_tmp(name: str) -> bool:
    """A leftover of an interrupted atomic write (`atomic_write_bytes` names them .<target>.<random>.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")


def _remove_tmp_leftovers(root: Path) -> None:
    """Drop what writes cut short by a kill left (under the writer lock, no one else is writing)."""
    for folder in (root, root / SHARDS):
        for path in folder.iterdir() if folder.is_dir() else ():
            if _is_tmp(path.name) and path.is_file():
                log.info("removing %s, left by an interrupted write", path)
                path.unlink()


def _holds_no_units(root: Path) -> bool:
    """Whether `root` holds nothing but what a writer makes before its first unit is recorded.

    That is the lock, clean.npz, a manifest listing no unit, temp files, and shards/ files no manifest
    lists; such a folder is what a failed first run leaves, and a fresh run may start over in it.
    """
    for path in root.iterdir():
        if path.name == MANIFEST:
            try:
                if _read_manifest(root)["units"]:
                    return False
            except DataFileError:
                return False
        elif path.name == SHARDS and path.is_dir():
            if not all(_is_tmp(f.name) or f.suffix in (".npz", ".parquet") for f in path.iterdir()):
                return False
        elif path.name not in (LOCK_FILE, CLEAN_FILE) and not _is_tmp(path.name):
            return False
    return True


def _resume_manifest(root: Path, fresh: dict[str, Any], clean_bytes: bytes, plan_ids: set[str]
                     ) -> tuple[dict[str, Any], list[str]]:
    """The stored manifest, less the units whose files fail any check, plus the units ranks finished
    without rank 0 recording them; (manifest, ids of the dropped units)."""
    manifest = _read_manifest(root)
    for key in ("grid", "victims", "image_shape", "config", "n_clean", "clean"):
        if json.loads(json.dumps(manifest.get(key), default=str)) != json.loads(json.dumps(fresh[key], default=str)):
            raise InputValidationError(
                f"cannot resume {root}: its {key} differs from this run's (same grid, victims, data, config needed)")
    shape = tuple(fresh["image_shape"])
    regenerated = []
    for unit_id, entry in list(manifest["units"].items()):
        _unit_files(root, unit_id, entry)  # a path leading elsewhere is refused, not papered over
        try:
            _read_unit(root, unit_id, entry, shape)
        except DataFileError as error:
            log.warning("unit %s is missing or corrupt on disk (%s); regenerating it", unit_id, error)
            del manifest["units"][unit_id]
            regenerated.append(unit_id)
    if _entry_files(root):  # units an interrupted run finished after its last manifest write
        _commit(root, manifest, {}, plan_ids)
    _remove_tmp_leftovers(root)
    clean = root / CLEAN_FILE
    if not (clean.is_file() and _inside(root, clean) and sha256_file(clean) == manifest["clean"]["sha256"]):
        atomic_write_bytes(clean, clean_bytes)
    return manifest, regenerated


def _made(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


def _open_corpus(root: Path, fresh: dict[str, Any], clean_bytes: bytes, plan_ids: set[str], resume: bool
                 ) -> tuple[dict[str, Any], list[str]]:
    """The manifest to continue (under the writer lock): a fresh one, or the stored one on --resume;
    (manifest, ids of the units found corrupt, to be made again)."""
    if _holds_no_units(root):  # empty, or what a failed first run left: start afresh
        _remove_tmp_leftovers(root)
        write_json(root / MANIFEST, fresh)  # first: a crash from here on leaves a recognisable corpus
        atomic_write_bytes(root / CLEAN_FILE, clean_bytes)
        return fresh, []
    if not (root / MANIFEST).exists():
        raise InputValidationError(f"{root} exists and is not empty; choose a new directory")
    if not resume:
        raise InputValidationError(f"{root} already holds a corpus; pass resume=True (--resume) to continue it")
    return _resume_manifest(root, fresh, clean_bytes, plan_ids)


def generate_corpus(images: torch.Tensor, labels: torch.Tensor, victims: Mapping[str, nn.Module], grid: GridSpec,
                    out_dir: str | Path, *, config: CorpusConfig | None = None,
                    indices: np.ndarray | None = None, data_info: dict[str, Any] | None = None,
                    victim_info: dict[str, Any] | None = None, resume: bool = False,
                    runner: AttackRunner | None = None, progress: bool = True,
                    max_units: int | None = None, device: str | torch.device = "cpu") -> CorpusReport:
    """Attack `images` (N, C, H, W) in [0, 1] with every grid cell on every victim; store the evidence.

    indices: data-set index of each clean image (the train/test split key; default 0..N-1).
    resume: continue a corpus in `out_dir` made with the same grid, victims, data and config;
        without it an existing corpus is an error (nothing is overwritten). Every reused unit is
        verified (files, sha256, row counts); a failing one is regenerated. A folder that a failed
        first run left without any unit needs no resume. One writer at a time: a second one, while
        another holds `out_dir`'s lock, is refused at once.
        Under torchrun every rank calls this with the same arguments and makes its share of the units
        (see the module docstring); each returns the same report.
    runner: replaces `run_grid_attack` (tests, other attack back ends).
    max_units: stop after generating this many units (a deliberate interruption, for tests).
    device: where the victims run the attacks ("auto", "cpu", "cuda"); the victims are moved there.
        Evidence is stored from the CPU either way; GPU arithmetic may differ from the CPU's in the
        last bits, so resuming on another device can change which borderline examples succeed.
    """
    config = config or CorpusConfig()
    device = resolve_device(device)
    runner = runner or run_grid_attack
    check_images(images, "images")
    check_labels(labels, images.shape[0])
    _check_victim_names(victims)
    if runner is run_grid_attack and victims:
        check_grid_params(grid, next(iter(victims.values())), images, config.victim_params.get(next(iter(victims)), {}))
    root = Path(out_dir)
    n_clean = images.shape[0]
    if n_clean == 0:
        raise InputValidationError("no clean images to attack")
    indices = np.arange(n_clean, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.shape != (n_clean,) or len(np.unique(indices)) != n_clean:
        raise InputValidationError("indices must hold one distinct data-set index per clean image")
    clean_u8 = torch.round(images.clamp(0, 1) * 255).to(torch.uint8)
    x_all = clean_u8.float() / 255.0 if config.quantize else images.detach().float()
    y_all = labels.detach().to(torch.int64)
    clean_bytes = _npz_bytes(images=clean_u8.numpy(), labels=y_all.numpy(), indices=indices)
    config_dict = {"shard_images": config.shard_images, "batch_size": config.batch_size,
                   "quantize": config.quantize, "seed": config.seed, "victim_params": config.victim_params,
                   "keep_unreached": config.keep_unreached}
    fresh = {"format": FORMAT, "version": VERSION, "grid": grid.to_dict(), "victims": list(victims),
             "victim_info": victim_info or {}, "data": data_info or {}, "image_shape": list(images.shape[1:]),
             "dtype": "uint8" if config.quantize else "float32", "quantize_bits": 8 if config.quantize else None,
             "config": config_dict, "n_clean": n_clean,
             "clean": {"file": CLEAN_FILE, "sha256": sha256_bytes(clean_bytes)}, "units": {}, "complete": False}
    if root.exists() and not root.is_dir():
        raise InputValidationError(f"{root} is not a directory")
    ranks = distributed.current()
    plan = _plan_units(list(victims), grid, n_clean, config.shard_images)
    plan_ids = {unit[0] for unit in plan}
    for model in victims.values():
        model.to(device).eval()
    with _writer_lock(_made(root)) if ranks.is_main else nullcontext():
        setup: dict[str, Any] = {}
        if ranks.is_main:  # rank 0 alone checks, resumes and holds the folder; the others follow its plan
            try:
                manifest, regenerated = _open_corpus(root, fresh, clean_bytes, plan_ids, resume)
                setup = {"done": sorted(manifest["units"]), "regenerated": regenerated,
                         "arch": victim_architectures(manifest)}
            except AdvForensicsError as error:
                ranks.broadcast({"error": str(error)})
                raise
        setup = ranks.broadcast(setup)
        if "error" in setup:
            raise InputValidationError(f"rank 0 could not open the corpus: {setup['error']}")
        done, arch = set(setup["done"]), setup["arch"]
        todo = [unit for unit in plan if unit[0] not in done]
        reused = [unit[0] for unit in plan if unit[0] in done]
        mine = ranks.take(todo)  # on demand: units differ in cost (victims, attacks), so no rank idles
        generated: list[str] = []
        own: dict[str, dict[str, Any]] = {}  # rank 0's units since the manifest was last written
        committed = time.monotonic()
        for unit in tqdm(mine, desc="corpus units", disable=not (progress and ranks.is_main), unit="unit",
                         total=len(todo) if not ranks.distributed else None):
            if max_units is not None and len(generated) >= max_units:
                break
            t0 = time.perf_counter()
            stacked, columns, cells, runs = _generate_unit(unit, grid, victims, arch, x_all, y_all, indices, config,
                                                           runner)
            seconds = time.perf_counter() - t0
            entry = _write_unit(root, unit[0], stacked, columns)
            entry.update({"cells": cells, "attack_runs": runs, "seconds": seconds})
            write_json(root / SHARDS / f"{unit[0]}{ENTRY_SUFFIX}", entry)  # the unit's files first, its record last
            generated.append(unit[0])
            if ranks.is_main:
                own[unit[0]] = entry
                if time.monotonic() - committed >= COMMIT_SECONDS:
                    _commit(root, manifest, own, plan_ids)
                    committed = time.monotonic()
        ranks.barrier()  # every rank's units are on disk
        if ranks.is_main:
            _commit(root, manifest, own, plan_ids, last=True)
        ranks.barrier()  # the manifest is final
    if not ranks.is_main:
        manifest = _read_manifest(root)
    generated = [unit_id for ids in ranks.all_gather(generated) for unit_id in ids]
    regenerated = setup["regenerated"]
    empty = [c for c in manifest["cells"] if c["succeeded"] == 0]
    for cell in empty:
        log.warning("empty grid cell (no successful example): victim %s, attack %s, hyper %g",
                    cell["victim"], cell["attack"], cell["hyper"])
    return CorpusReport(path=root, units_total=len(plan), units_generated=generated, units_reused=reused,
                        units_regenerated=regenerated,
                        n_examples=sum(int(e["n_examples"]) for e in manifest["units"].values()),
                        cells=manifest["cells"], empty_cells=empty, throughput=manifest["throughput"],
                        corpus_id=manifest["corpus_id"] or "")


__all__ = ["CellResult", "CorpusConfig", "CorpusReport", "check_grid_params", "generate_corpus",
           "run_grid_attack"]
