"""The attribution corpus on disk and in memory (MTAA, Guo et al. arXiv 2302.14059): storage, verification, loading.

A corpus directory holds
    clean.npz             the clean images (uint8 (N, C, H, W)), their labels and data-set indices
    shards/<unit>.npz     adversarial evidence of one work unit, uint8 (M, C, H, W) by default
    shards/<unit>.parquet one label row per evidence image (attack, victim, hyper, success, norms, ...)
    manifest.json         grid, victims, data, per-shard sha256 and counts, per-cell success statistics
    .advforensics.lock    the writer's lock (one writer per corpus; harmless when left behind)

A work unit is (victim, attack, chunk of clean images). A unit's files are exactly shards/<unit>.npz and
.parquet: manifest paths that lead elsewhere are refused, never followed. Loading checks every file
against the manifest's sha256 and row counts; `Corpus` is a verified corpus in memory, and the splits
(`split_by_clean_image`, `attribution_splits`) keep all rows of one clean image on one side.

Making a corpus (attacking the victims, resuming, the writer's lock) is `corpus_generation`'s job;
it imports this module, never the other way round.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from advforensics.attribution.grid import CLEAN, GridSpec
from advforensics.data.npz import load_arrays
from advforensics.errors import DataFileError, InputValidationError, UnknownNameError
from advforensics.utils import atomic_write_bytes, sha256_bytes, sha256_file

FORMAT = "advforensics-attribution-corpus"
VERSION = 2  # 2: variants, per-example params, victim architecture, unreached C&W examples dropped
MANIFEST = "manifest.json"
CLEAN_FILE = "clean.npz"
SHARDS = "shards"
LOCK_FILE = ".advforensics.lock"

#: Parquet label columns and their NumPy dtypes.
COLUMNS: dict[str, Any] = {
    "clean_pos": np.int64,  # row of clean.npz this example was made from
    "clean_index": np.int64,  # index of the clean image in its data set (the split key)
    "clean_label": np.int64,
    "attack": object,  # the attack family (the attributor's label), "clean" for clean and benign rows
    "variant": object,  # the grid variant's key (family~variant), or the benign change of a clean row
    "implementation": object,  # "advforensics" or "art" ("" for clean rows)
    "params": object,  # JSON: every parameter the example was made with, the value and seed included
    "victim": object,  # the victim model's name in the corpus
    "victim_arch": object,  # its architecture (the attributor's victim label)
    "hyper": np.float32,  # eps * 255 (FGSM/PGD/Square) or kappa (C&W); 0 for clean and DeepFool
    "success": np.bool_,
    "predicted": np.int64,  # victim's label of the stored (quantised) evidence
    "l2": np.float32,
    "linf": np.float32,
    "margin": np.float32,  # best other logit - true logit on the stored evidence (> 0: fooled)
    "reached": np.bool_,  # C&W: the attack's own output holds margin >= kappa; True for the others
}


# ----------------------------------------------------------------------------------------------
# storage helpers


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _parquet_bytes(columns: dict[str, np.ndarray]) -> bytes:
    table = pa.table({name: pa.array(list(values) if COLUMNS[name] is object else values)
                      for name, values in columns.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = load_arrays(path)  # member sizes are capped before numpy inflates anything
    if not isinstance(arrays, dict):
        raise DataFileError(f"corrupt corpus file {path}: an .npy array, not an .npz archive")
    return arrays


def _load_parquet(path: Path) -> dict[str, np.ndarray]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise DataFileError(f"corrupt corpus label file {path}: {error}") from None
    missing = set(COLUMNS) - set(table.column_names)
    if missing:
        raise DataFileError(f"corpus label file {path} lacks columns {sorted(missing)}")
    return {name: (np.asarray(table.column(name).to_pylist(), dtype=object) if dtype is object
                   else table.column(name).to_numpy().astype(dtype)) for name, dtype in COLUMNS.items()}

def _unit_names(unit_id: str) -> dict[str, str]:
    """The manifest's file names of a unit's images and labels (relative to the corpus root)."""
    return {"images": f"{SHARDS}/{unit_id}.npz", "labels": f"{SHARDS}/{unit_id}.parquet"}


def _write_unit(root: Path, unit_id: str, images: np.ndarray, columns: dict[str, np.ndarray]) -> dict[str, Any]:
    img_bytes = _npz_bytes(images=images)
    lab_bytes = _parquet_bytes(columns)
    names = _unit_names(unit_id)
    atomic_write_bytes(root / names["images"], img_bytes)
    atomic_write_bytes(root / names["labels"], lab_bytes)
    return {**names, "images_sha256": sha256_bytes(img_bytes), "labels_sha256": sha256_bytes(lab_bytes),
            "n_examples": int(len(images))}


def _inside(root: Path, path: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside the corpus root."""
    return path.resolve().is_relative_to(root.resolve())


def _unit_files(root: Path, unit_id: str, entry: Mapping[str, Any]) -> dict[str, Path]:
    """A unit's files, which must be exactly shards/<unit_id>.npz/.parquet inside the corpus.

    The manifest is data: an edited one must not make the reader open files outside the corpus.
    """
    if not unit_id or any(bad in unit_id for bad in ("/", "\\", "..", "\0")):
        raise DataFileError(f"corpus {root}: invalid unit id {unit_id!r} in the manifest")
    files = {}
    for key, name in _unit_names(unit_id).items():
        if entry.get(key) != name:
            raise DataFileError(f"corpus {root}, unit {unit_id}: the manifest names {entry.get(key)!r} for its "
                                f"{key}, expected {name!r}")
        if not _inside(root, root / name):
            raise DataFileError(f"corpus {root}, unit {unit_id}: {name} leads outside the corpus (a symlink?)")
        files[key] = root / name
    return files


def _read_unit(root: Path, unit_id: str, entry: Mapping[str, Any], shape: tuple[int, ...], verify: bool = True
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One unit's (images, label columns), checked against its manifest entry; anything amiss -> DataFileError."""
    files = _unit_files(root, unit_id, entry)
    for key, file in files.items():
        if not file.is_file():
            raise DataFileError(f"corpus shard {file} listed in the manifest is missing")
        if verify and sha256_file(file) != entry.get(f"{key}_sha256"):
            raise DataFileError(f"corpus shard {file} does not match the manifest's sha256 (modified or corrupt)")
    shard = _load_npz(files["images"])
    if "images" not in shard:
        raise DataFileError(f"corpus shard {files['images']} has no 'images' array")
    images = shard["images"]
    if images.shape[1:] != shape:
        raise DataFileError(f"corpus shard {files['images']} has images of shape {images.shape[1:]}, "
                            f"manifest says {shape}")
    cols = _load_parquet(files["labels"])
    n = len(images)
    if entry.get("n_examples") != n or any(len(v) != n for v in cols.values()):
        raise DataFileError(f"corpus shard {unit_id}: image and label counts disagree with the manifest")
    return images, cols


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise DataFileError(f"no corpus manifest at {path}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataFileError(f"unreadable corpus manifest {path}: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataFileError(f"{path} is not an advforensics attribution corpus manifest")
    if manifest.get("version") != VERSION:
        raise DataFileError(f"{path}: corpus format version {manifest.get('version')} (expected {VERSION})")
    if not isinstance(manifest.get("units"), dict):
        raise DataFileError(f"{path}: the manifest's units are not a mapping of unit id to entry")
    return manifest


def _corpus_id(manifest: dict[str, Any]) -> str:
    """Content hash of a corpus: grid, victims, clean images and every shard's hashes."""
    digest = hashlib.sha256()
    digest.update(json.dumps(manifest["grid"], sort_keys=True).encode())
    digest.update(json.dumps(manifest["victims"]).encode())
    digest.update(manifest["clean"]["sha256"].encode())
    for unit_id in sorted(manifest["units"]):
        entry = manifest["units"][unit_id]
        digest.update(f"{unit_id}:{entry['images_sha256']}:{entry['labels_sha256']}".encode())
    return digest.hexdigest()


def victim_architectures(manifest: Mapping[str, Any]) -> dict[str, str]:
    """victim name -> architecture name, from the manifest's victim_info (the name itself without it)."""
    info = manifest.get("victim_info", {}) or {}
    return {v: str(((info.get(v) or {}).get("architecture") or {}).get("name", v)) for v in manifest["victims"]}


# ----------------------------------------------------------------------------------------------
# loading


@dataclass
class Corpus:
    """A verified corpus in memory. Row i of `images` is described by `columns[*][i]`."""

    path: Path
    manifest: dict[str, Any]
    images: np.ndarray  # (M, C, H, W) uint8 (or float32 for float evidence)
    columns: dict[str, np.ndarray]  # COLUMNS, each (M,)
    clean_images: np.ndarray  # (N, C, H, W) uint8
    clean_labels: np.ndarray  # (N,)
    clean_indices: np.ndarray  # (N,)

    @property
    def grid(self) -> GridSpec:
        return GridSpec.from_dict(self.manifest["grid"])

    @property
    def corpus_id(self) -> str:
        return str(self.manifest["corpus_id"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.manifest["image_shape"])  # type: ignore[return-value]

    @property
    def attack_names(self) -> list[str]:
        return self.grid.attack_names

    @property
    def victim_names(self) -> list[str]:
        """Victim vocabulary: the victims' architectures (two seeds of one architecture are one class)."""
        archs = list(dict.fromkeys(victim_architectures(self.manifest).values()))
        return archs + ([CLEAN] if self.grid.include_clean else [])

    def __len__(self) -> int:
        return int(len(self.images))

    def attack_targets(self) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.attack_names)}
        return np.array([lookup[a] for a in self.columns["attack"]], dtype=np.int64)

    def victim_targets(self) -> np.ndarray:
        lookup = {name: i for i, name in enumerate(self.victim_names)}
        return np.array([lookup[v] for v in self.columns["victim_arch"]], dtype=np.int64)

    def hyper_targets(self) -> np.ndarray:
        return self.columns["hyper"].astype(np.float32)

    def float_images(self, rows: np.ndarray | slice | None = None) -> torch.Tensor:
        """Evidence as float (B, C, H, W) in [0, 1]."""
        data = self.images if rows is None else self.images[rows]
        tensor = torch.from_numpy(np.ascontiguousarray(data))
        return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()

    def float_clean(self, rows: np.ndarray | slice | None = None) -> torch.Tensor:
        """The clean image each evidence row was made from, (B, C, H, W) in [0, 1]."""
        pos = self.columns["clean_pos"] if rows is None else self.columns["clean_pos"][rows]
        return torch.from_numpy(self.clean_images[pos]).float() / 255.0

    def subset(self, attacks: Sequence[str] | None = None, victims: Sequence[str] | None = None) -> Corpus:
        """The rows made by these attacks on these victims (clean rows stay if the grid has them).

        For the scalability tables (2 attacks x 3 victims, 3 x 5): the subset is a corpus of its own,
        with its own vocabularies and an id derived from the parent's id and the selection, so an
        attributor trained on it evaluates only on the same subset.
        """
        grid = self.grid
        attacks = list(grid.attack_names if attacks is None else attacks)
        victims = list(self.manifest["victims"] if victims is None else victims)
        for name in attacks:
            if name != CLEAN:
                grid.attack(name)  # unknown names fail here
        unknown = [v for v in victims if v not in self.manifest["victims"]]
        if unknown:
            raise UnknownNameError(f"victims {unknown} are not in the corpus; corpus victims: "
                                   f"{', '.join(self.manifest['victims'])}")
        if not [a for a in attacks if a != CLEAN] or not victims:
            raise InputValidationError("a corpus subset needs at least one attack and one victim")
        adversarial = np.isin(self.columns["attack"], attacks) & np.isin(self.columns["victim"], victims)
        keep = adversarial | (self.columns["attack"] == CLEAN) if grid.include_clean else adversarial
        rows = np.flatnonzero(keep)
        sub_grid = GridSpec(attacks=tuple(a for a in grid.attacks if a.name in attacks),
                            include_clean=grid.include_clean, values_per_image=grid.values_per_image,
                            benign=grid.benign)
        selection = {"parent": self.corpus_id, "attacks": [a for a in sub_grid.attack_names if a != CLEAN],
                     "victims": [v for v in self.manifest["victims"] if v in victims]}
        manifest = {**self.manifest, "grid": sub_grid.to_dict(), "victims": selection["victims"],
                    "subset": selection,
                    "corpus_id": hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()}
        return Corpus(path=self.path, manifest=manifest, images=self.images[rows],
                      columns={name: values[rows] for name, values in self.columns.items()},
                      clean_images=self.clean_images, clean_labels=self.clean_labels,
                      clean_indices=self.clean_indices)


def load_corpus(path: str | Path, *, verify: bool = True, allow_incomplete: bool = False) -> Corpus:
    """Load a corpus; with `verify`, every shard must match the manifest's sha256 and row counts."""
    root = Path(path)
    manifest = _read_manifest(root)
    if not manifest.get("complete") and not allow_incomplete:
        raise DataFileError(f"corpus {root} is incomplete; finish it with `attribution corpus ... --resume`")
    clean_path = root / CLEAN_FILE
    if not clean_path.is_file():
        raise DataFileError(f"corpus {root} lacks {CLEAN_FILE}")
    if not _inside(root, clean_path):
        raise DataFileError(f"corpus {root}: {CLEAN_FILE} leads outside the corpus (a symlink?)")
    if verify and sha256_file(clean_path) != manifest["clean"]["sha256"]:
        raise DataFileError(f"{clean_path} does not match the manifest's sha256 (modified or corrupt)")
    clean = _load_npz(clean_path)
    shape = tuple(manifest["image_shape"])
    images: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
    for unit_id in sorted(manifest["units"]):
        shard, cols = _read_unit(root, unit_id, manifest["units"][unit_id], shape, verify)
        images.append(shard)
        for name, values in cols.items():
            parts[name].append(values)
    dtype = np.uint8 if manifest["dtype"] == "uint8" else np.float32
    stacked = np.concatenate(images) if images else np.zeros((0, *shape), dtype)
    columns = {name: (np.concatenate(p) if p else np.zeros(0, dtype=COLUMNS[name])) for name, p in parts.items()}
    if manifest.get("complete") and manifest.get("corpus_id") != _corpus_id(manifest):
        raise DataFileError(f"corpus {root}: manifest corpus_id does not match its contents")
    return Corpus(path=root, manifest=manifest, images=stacked, columns=columns, clean_images=clean["images"],
                  clean_labels=clean["labels"], clean_indices=clean["indices"])


def split_by_clean_image(clean_index: np.ndarray, test_fraction: float = 0.2, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, test) masks over rows; all rows of one clean image fall on one side.

    Splitting by example would put the same clean image (attacked at other strengths or on other
    victims) on both sides and inflate test accuracy.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputValidationError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = np.unique(clean_index)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(unique)
    n_test = max(1, int(round(test_fraction * len(unique)))) if len(unique) > 1 else 0
    test_ids = shuffled[:n_test]
    test = np.isin(clean_index, test_ids)
    return ~test, test


def attribution_splits(clean_index: np.ndarray, test_fraction: float, calibration_fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean (train, calibration, test) row masks, all by clean image.

    The test split is `split_by_clean_image`'s (so older cards reproduce theirs); the calibration
    split takes `calibration_fraction` of the remaining clean images (0: none).
    """
    train, test = split_by_clean_image(clean_index, test_fraction, seed)
    calibration = np.zeros_like(train)
    if calibration_fraction > 0:
        rest = np.flatnonzero(train)
        keep, held = split_by_clean_image(clean_index[rest], calibration_fraction, seed + 1)
        calibration[rest[held]] = True
        train = train & ~calibration
    return train, calibration, test


__all__ = ["COLUMNS", "Corpus", "attribution_splits", "load_corpus", "split_by_clean_image",
           "victim_architectures"]
