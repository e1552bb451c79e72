"""Corpus writers (issue 12): one writer per folder, SIGKILL-safe resume, fully verified reuse, retriable
failed first runs, manifest paths confined to the corpus, capped .npz members."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from advforensics.attribution.corpus import load_corpus
from advforensics.attribution.corpus_generation import CorpusConfig, generate_corpus
from advforensics.attribution.grid import AttackSpec, GridSpec
from advforensics.errors import DataFileError, InputValidationError
from advforensics.utils import sha256_file

GRID = GridSpec(attacks=(AttackSpec("fgsm", (30.0, 90.0)),
                         AttackSpec("pgd-linf", (60.0,), {"steps": 2, "alpha_ratio": 0.5})),
                include_clean=True)
CONFIG = {"shard_images": 4, "batch_size": 16}  # 32 images: 8 chunks x (clean, fgsm, pgd) = 24 units
N_IMAGES = 32

#: One writer in its own process: loads the setup, says it is ready (and waits for a go file if given),
#: runs generate_corpus and writes what happened as JSON.
WORKER = """
import argparse, json, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from advforensics.attribution.corpus_generation import CorpusConfig, generate_corpus, run_grid_attack
from advforensics.attribution.grid import GridSpec

parser = argparse.ArgumentParser()
parser.add_argument("setup")
parser.add_argument("out")
parser.add_argument("status")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--go")
args = parser.parse_args()
setup = torch.load(args.setup, weights_only=False)
calls = 0

def runner(*a):
    global calls
    calls += 1
    time.sleep(args.sleep)  # keeps the lock held long enough for a second writer to meet it
    return run_grid_attack(*a)

Path(args.status + ".ready").touch()
while args.go and not Path(args.go).exists():
    time.sleep(0.005)
try:
    report = generate_corpus(setup["images"], setup["labels"], setup["victims"],
                             GridSpec.from_dict(setup["grid"]), args.out, config=CorpusConfig(**setup["config"]),
                             runner=runner, progress=False)
    result = {"ok": True, "generated": report.units_generated, "corpus_id": report.corpus_id}
except Exception as error:
    result = {"ok": False, "error": type(error).__name__, "message": str(error)}
Path(args.status).write_text(json.dumps({**result, "calls": calls}))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_data, mlp_victim):
    """The tiny setup, in memory and saved for worker processes, and the worker script."""
    root = tmp_path_factory.mktemp("setup")
    images, labels = digits_data[0][:N_IMAGES], digits_data[1][:N_IMAGES]
    victims = {"tinyb": mlp_victim(16, 0)}
    torch.save({"images": images, "labels": labels, "victims": victims, "grid": GRID.to_dict(), "config": CONFIG},
               root / "setup.pt")
    (root / "worker.py").write_text(WORKER)
    return SimpleNamespace(images=images, labels=labels, victims=victims, file=root / "setup.pt",
                           worker=root / "worker.py")


def _generate(out: Path, setup, grid: GridSpec = GRID, **kw):
    return generate_corpus(setup.images, setup.labels, setup.victims, grid, out, config=CorpusConfig(**CONFIG),
                           progress=False, **kw)


def _rows(corpus) -> list[tuple]:
    c = corpus.columns
    return sorted(zip(c["clean_index"], c["victim"], c["variant"], c["attack"], c["hyper"]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, setup):
    """An uninterrupted single writer's corpus, and how long generating it took."""
    out = tmp_path_factory.mktemp("reference") / "corpus"
    t0 = time.perf_counter()
    report = _generate(out, setup)
    seconds = time.perf_counter() - t0
    corpus = load_corpus(out)
    assert len(report.units_generated) == report.units_total == 24 and len(corpus) > N_IMAGES
    return SimpleNamespace(path=out, corpus_id=corpus.corpus_id, rows=_rows(corpus),
                           units=sorted(report.units_generated), seconds=seconds)


def _start_worker(setup, out: Path, status: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(setup.worker), str(setup.file), str(out), str(status), *options],
                            cwd=status.parent)


def _wait_ready(status: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    marker = Path(f"{status}.ready")
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, f"worker exited with {process.returncode} before it was ready"
        assert time.monotonic() < deadline, "worker never got ready"
        time.sleep(0.005)


def _copy(reference, tmp_path: Path) -> Path:
    out = tmp_path / "a" / "corpus"
    shutil.copytree(reference.path, out)
    return out


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _unit_with_examples(root: Path) -> str:
    units = json.loads((root / "manifest.json").read_text())["units"]
    return sorted(u for u, e in units.items() if e["n_examples"] > 0 and "clean" not in u)[0]


def test_two_concurrent_writers_one_generates_the_other_refuses(tmp_path, setup, reference):
    out, go = tmp_path / "corpus", tmp_path / "go"
    statuses = [tmp_path / "w0.json", tmp_path / "w1.json"]
    workers = [_start_worker(setup, out, status, "--sleep", "0.05", "--go", str(go)) for status in statuses]
    try:
        for status, worker in zip(statuses, workers):
            _wait_ready(status, worker)
        go.touch()  # both call generate_corpus at once
        for worker in workers:
            assert worker.wait(timeout=120) == 0
    finally:
        for worker in workers:
            worker.kill()
    results = [json.loads(status.read_text()) for status in statuses]
    winners = [i for i, r in enumerate(results) if r["ok"]]
    assert len(winners) == 1, results
    winner, loser = results[winners[0]], results[1 - winners[0]]
    assert loser["error"] == "InputValidationError"
    assert re.fullmatch(rf"corpus {re.escape(str(out))} is being written by another process "
                        rf"\(pid {workers[winners[0]].pid}\); wait for it to finish, then rerun with --resume",
                        loser["message"]), loser["message"]
    assert loser["calls"] == 0  # it refused before attacking anything
    assert sorted(winner["generated"]) == reference.units  # every unit once, none twice
    assert winner["corpus_id"] == load_corpus(out).corpus_id == reference.corpus_id
    # the lock went with its holder: the next writer gets in and only reuses
    again = _generate(out, setup, resume=True)
    assert again.units_generated == [] and sorted(again.units_reused) == reference.units


def _kill_and_resume(tmp_path: Path, setup, reference, rng: random.Random) -> bool:
    """Kill a writer at a random moment, resume in-process, check the result; True if it died mid-run."""
    tmp_path.mkdir()
    out, status = tmp_path / "corpus", tmp_path / "status.json"
    worker = _start_worker(setup, out, status)
    try:
        _wait_ready(status, worker)
        time.sleep(rng.uniform(0.0, 1.2 * reference.seconds))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        worker.kill()
    manifest = out / "manifest.json"
    # a unit is recorded in the manifest or, since its last rewrite, in its own shards/<unit>.entry.json
    listed = sorted({*(json.loads(manifest.read_text())["units"] if manifest.exists() else []),
                     *(p.name[:-len(".entry.json")] for p in (out / "shards").glob("*.entry.json"))})
    report = _generate(out, setup, resume=True)
    assert report.units_regenerated == []  # every unit recorded survived the kill intact
    assert sorted(report.units_reused) == listed
    assert sorted(report.units_reused + report.units_generated) == reference.units
    corpus = load_corpus(out, verify=True)
    assert corpus.corpus_id == reference.corpus_id
    rows = _rows(corpus)
    assert rows == reference.rows and len(set(rows)) == len(rows)  # nothing duplicated, nothing missing
    return 0 < len(listed) < len(reference.units)


@pytest.mark.parametrize("kills", [3, pytest.param(20, marks=pytest.mark.slow)])
def test_sigkill_at_random_moments_then_resume_completes_the_same_corpus(tmp_path, setup, reference, kills):
    rng = random.Random(kills)
    mid_run = sum(_kill_and_resume(tmp_path / f"kill{i}", setup, reference, rng) for i in range(kills))
    if kills >= 20:  # the delays span the run: most kills must land while units are being written
        assert mid_run >= kills // 4, f"only {mid_run} of {kills} kills interrupted the unit loop"


def test_resume_regenerates_a_unit_whose_count_was_edited(tmp_path, setup, reference):
    root = _copy(reference, tmp_path)
    unit = _unit_with_examples(root)
    _edit_manifest(root, lambda m: m["units"][unit].update(n_examples=m["units"][unit]["n_examples"] + 1))
    with pytest.raises(DataFileError, match="counts"):
        load_corpus(root)
    report = _generate(root, setup, resume=True)
    assert report.units_regenerated == [unit] and report.units_generated == [unit]
    assert load_corpus(root).corpus_id == reference.corpus_id


def test_resume_removes_what_writes_cut_short_left(tmp_path, setup, reference):
    # a SIGKILL inside atomic_write_bytes leaves .<target>.<random>.tmp beside its target
    root = _copy(reference, tmp_path)
    unit = _unit_with_examples(root)
    _edit_manifest(root, lambda m: m["units"].pop(unit))
    leftovers = [root / "shards" / f".{unit}.entry.json.k1ll3d.tmp", root / ".manifest.json.x8a2q.tmp"]
    for path in leftovers:
        path.write_bytes(b"")
    report = _generate(root, setup, resume=True)
    assert report.units_generated == [unit]
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in (root / "shards").iterdir()) == \
        sorted(p.name for p in (reference.path / "shards").iterdir())
    assert load_corpus(root, verify=True).corpus_id == reference.corpus_id


def _point_outside(root: Path, unit: str, how: str) -> tuple[str, Path]:
    """Make the manifest (or a symlink) lead unit `unit`'s images outside the corpus, to a faithful copy
    of the shard (so only the location is wrong); (the unit id as the manifest now names it, the copy)."""
    shard = root / "shards" / f"{unit}.npz"
    outside = root.parent.parent / "elsewhere.npz"  # root/../../elsewhere.npz
    shutil.copy(shard, outside)
    if how == "symlink":
        shard.unlink()
        shard.symlink_to(outside)
        return unit, outside
    if how == "unit id":  # the id itself climbs out: shards/../../elsewhere.npz is root/../elsewhere.npz
        bad_id = "../../elsewhere"
        shutil.copy(shard, root.parent / "elsewhere.npz")
        shutil.copy(root / "shards" / f"{unit}.parquet", root.parent / "elsewhere.parquet")

        def rename(m):
            entry = m["units"].pop(unit)
            m["units"][bad_id] = {**entry, "images": f"shards/{bad_id}.npz", "labels": f"shards/{bad_id}.parquet"}

        _edit_manifest(root, rename)
        return bad_id, root.parent / "elsewhere.npz"
    path = "../../elsewhere.npz" if how == "relative" else str(outside.resolve())
    _edit_manifest(root, lambda m: m["units"][unit].update(images=path))
    return unit, outside


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink", "unit id"])
def test_manifest_paths_leading_outside_are_refused(tmp_path, setup, reference, how):
    root = _copy(reference, tmp_path)
    unit, outside = _point_outside(root, _unit_with_examples(root), how)
    before = outside.read_bytes()
    with pytest.raises(DataFileError, match=re.escape(unit)):
        load_corpus(root)
    with pytest.raises(DataFileError, match=re.escape(unit)):
        load_corpus(root, verify=False)
    with pytest.raises(DataFileError, match=re.escape(unit)):
        _generate(root, setup, resume=True)
    assert outside.read_bytes() == before


NO_CLEAN = GridSpec(attacks=(AttackSpec("fgsm", (30.0, 90.0)),))  # the first unit runs an attack


def test_a_failed_first_run_is_retried_without_resume(tmp_path, setup):
    def broken(*args):
        raise RuntimeError("attack back end down")

    out = tmp_path / "corpus"
    with pytest.raises(RuntimeError, match="back end down"):
        _generate(out, setup, grid=NO_CLEAN, runner=broken)
    manifest = json.loads((out / "manifest.json").read_text())  # a recognisable, empty corpus
    assert manifest["units"] == {} and manifest["complete"] is False
    assert sorted(p.name for p in out.iterdir()) == [".advforensics.lock", "clean.npz", "manifest.json"]
    (out / ".clean.npz.x1.tmp").write_bytes(b"half")  # what a crash inside an atomic write leaves
    (out / "shards").mkdir()
    (out / "shards" / ".fgsm.npz.x2.tmp").write_bytes(b"half")
    report = _generate(out, setup, grid=NO_CLEAN)
    assert report.units_reused == [] and len(report.units_generated) == report.units_total == 8
    expected = _generate(tmp_path / "single", setup, grid=NO_CLEAN).corpus_id
    assert load_corpus(out).corpus_id == expected
    with pytest.raises(InputValidationError, match="resume"):  # stored units still need --resume
        _generate(out, setup, grid=NO_CLEAN)


def test_a_folder_with_foreign_files_is_refused_even_with_resume(tmp_path, setup):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(InputValidationError, match="not empty"):
            _generate(out, setup, resume=resume)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "manifest.json").exists() and not (out / "clean.npz").exists()


def test_an_npz_member_claiming_more_than_the_cap_is_refused(tmp_path, setup, reference):
    root = _copy(reference, tmp_path)
    unit = _unit_with_examples(root)
    shard = root / "shards" / f"{unit}.npz"
    data = bytearray(shard.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the only member's central directory entry
    real = int.from_bytes(data[central + 24:central + 28], "little")
    assert data.count(b"PK\x01\x02") == 1 and 0 < real < 1 << 20  # a plain zip entry: its size field is here
    data[central + 24:central + 28] = (2 << 30).to_bytes(4, "little")  # claims 2 GiB (cap: 1 GiB)
    shard.write_bytes(bytes(data))
    # a manifest edited to match, so that only the cap can stop the read
    _edit_manifest(root, lambda m: m["units"][unit].update(images_sha256=sha256_file(shard)))
    for verify in (True, False):
        with pytest.raises(DataFileError, match=r"would decompress to 2,147,483,648 bytes"):
            load_corpus(root, verify=verify)
    report = _generate(root, setup, resume=True)  # resume treats it as corrupt: regenerated
    assert report.units_regenerated == [unit]
    assert load_corpus(root).corpus_id == reference.corpus_id


def test_victim_names_that_would_climb_out_of_shards_are_refused(tmp_path, setup):
    for name in ("a..b", "a\\b"):
        with pytest.raises(InputValidationError, match="invalid victim name"):
            generate_corpus(setup.images, setup.labels, {name: setup.victims["tinyb"]}, GRID, tmp_path / "x",
                            progress=False)
    assert not (tmp_path / "x").exists()
