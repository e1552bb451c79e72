"""Attribution corpus: generation, 8-bit evidence, resume, integrity checks and the split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from advforensics.attribution.corpus import load_corpus, split_by_clean_image
from advforensics.attribution.corpus_generation import CellResult, CorpusConfig, generate_corpus
from advforensics.attribution.grid import AttackSpec, GridSpec, default_grid
from advforensics.errors import DataFileError, InputValidationError


GRID = GridSpec(attacks=(AttackSpec("fgsm", (30.0, 90.0, 150.0)),
                         AttackSpec("pgd-linf", (30.0, 90.0), {"steps": 3, "alpha_ratio": 0.5})),
                include_clean=True)


@pytest.fixture(scope="module")
def victims(mlp_victim):
    return {"tinya": mlp_victim(32, 0)}


@pytest.fixture(scope="module")
def clean(digits_data):
    images, labels = digits_data
    return images[:48], labels[:48]


def _make(out: Path, clean, victims, **kw):
    images, labels = clean
    return generate_corpus(images, labels, victims, GRID, out, config=CorpusConfig(shard_images=16, batch_size=32),
                           progress=False, **kw)


def test_default_grid_is_table_1():
    grid = default_grid()
    assert [a.name for a in grid.attacks] == ["fgsm", "pgd-linf", "cw-l2"]
    assert grid.attacks[0].values == tuple(float(v) for v in range(10, 201, 10))
    assert grid.attacks[2].values == tuple(float(v) for v in range(5, 101, 5))
    assert grid.n_cells(5) == 300


def test_corpus_is_8bit_successful_and_records_cells(tmp_path, clean, victims):
    report = _make(tmp_path / "c", clean, victims)
    corpus = load_corpus(tmp_path / "c")
    assert corpus.images.dtype == np.uint8 and corpus.images.shape[1:] == (1, 8, 8)
    adv = corpus.columns["attack"] != "clean"
    # every stored adversarial example fools the victim as stored (after quantisation)
    x = corpus.float_images(np.flatnonzero(adv))
    pred = victims["tinya"](x).argmax(1).numpy()
    assert (pred != corpus.columns["clean_label"][adv]).all()
    assert (corpus.columns["predicted"][adv] == pred).all()
    # FGSM evidence differs from the clean image by exactly eps on the 8-bit grid (up to clipping)
    fgsm = np.flatnonzero(corpus.columns["attack"] == "fgsm")
    diff = corpus.images[fgsm].astype(int) - corpus.clean_images[corpus.columns["clean_pos"][fgsm]].astype(int)
    assert (np.abs(diff).max(axis=(1, 2, 3)) == corpus.columns["hyper"][fgsm].astype(int)).all()
    # one cell stat per victim x attack x value, with success rates in [0, 1]
    assert len(report.cells) == 5
    assert all(0 <= c["success_rate"] <= 1 and c["attempted"] > 0 for c in report.cells)
    assert sum(c["succeeded"] for c in report.cells) == int(adv.sum())
    assert int((~adv).sum()) == 48
    assert report.corpus_id == corpus.corpus_id


def test_float_evidence_option(tmp_path, clean, victims):
    images, labels = clean
    generate_corpus(images[:16], labels[:16], victims, GRID, tmp_path / "f",
                    config=CorpusConfig(shard_images=16, quantize=False), progress=False)
    assert load_corpus(tmp_path / "f").images.dtype == np.float32


def test_fgsm_uses_one_gradient_for_all_epsilons(tmp_path, clean, victims, monkeypatch):
    import advforensics.attacks.fgsm as fgsm

    calls = []
    real = fgsm.fgsm_multi_eps

    def spy(model, x, y, epsilons):
        calls.append(list(epsilons))
        return real(model, x, y, epsilons)

    monkeypatch.setattr(fgsm, "fgsm_multi_eps", spy)
    grid = GridSpec(attacks=(AttackSpec("fgsm", (10.0, 20.0, 30.0, 40.0)),))
    images, labels = clean
    generate_corpus(images, labels, victims, grid, tmp_path / "g", config=CorpusConfig(shard_images=48),
                    progress=False)
    assert calls and all(eps == pytest.approx([10 / 255, 20 / 255, 30 / 255, 40 / 255]) for eps in calls)
    assert len(calls) == 1  # one batch, one gradient, four epsilons


def test_resume_after_interruption_has_no_duplicates_or_losses(tmp_path, clean, victims):
    full = _make(tmp_path / "full", clean, victims)
    reference = load_corpus(tmp_path / "full")
    part = _make(tmp_path / "part", clean, victims, max_units=4)
    assert len(part.units_generated) == 4
    with pytest.raises(DataFileError, match="incomplete"):
        load_corpus(tmp_path / "part")
    # simulate a crash while writing the next unit: a stray temp file and a shard without manifest entry
    shards = tmp_path / "part" / "shards"
    (shards / ".tinya__pgd-linf__00002.npz.abc.tmp").write_bytes(b"half")
    next_unit = [u for u in full.units_generated if u not in part.units_generated][0]
    (shards / f"{next_unit}.npz").write_bytes(b"half-written garbage")
    with pytest.raises(InputValidationError, match="resume"):
        _make(tmp_path / "part", clean, victims)
    resumed = _make(tmp_path / "part", clean, victims, resume=True)
    assert sorted(resumed.units_reused) == sorted(part.units_generated)
    assert len(resumed.units_generated) == full.units_total - 4
    again = load_corpus(tmp_path / "part")
    assert len(again) == len(reference)
    assert again.corpus_id == reference.corpus_id  # same seeds: bit-identical shards
    key = lambda c: sorted(zip(c.columns["clean_index"], c.columns["attack"], c.columns["victim"], c.columns["hyper"]))
    rows = key(again)
    assert rows == key(reference) and len(set(rows)) == len(rows)


def test_resume_regenerates_a_corrupt_shard(tmp_path, clean, victims):
    _make(tmp_path / "c", clean, victims)
    reference = load_corpus(tmp_path / "c")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    unit = sorted(u for u in manifest["units"] if manifest["units"][u]["n_examples"] > 0)[0]
    path = tmp_path / "c" / manifest["units"][unit]["images"]
    path.write_bytes(path.read_bytes()[:-7] + b"corrupt")
    with pytest.raises(DataFileError, match="sha256"):
        load_corpus(tmp_path / "c")
    report = _make(tmp_path / "c", clean, victims, resume=True)
    assert report.units_regenerated == [unit] and report.units_generated == [unit]
    assert load_corpus(tmp_path / "c").corpus_id == reference.corpus_id


def test_manifest_mismatch_detected(tmp_path, clean, victims):
    _make(tmp_path / "c", clean, victims)
    manifest_path = tmp_path / "c" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    unit = sorted(u for u in manifest["units"] if manifest["units"][u]["n_examples"] > 0)[0]
    manifest["units"][unit]["n_examples"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DataFileError, match="counts"):
        load_corpus(tmp_path / "c")
    # resuming with another grid is refused, not merged
    other = GridSpec(attacks=(AttackSpec("fgsm", (30.0,)),))
    images, labels = clean
    with pytest.raises(InputValidationError, match="grid"):
        generate_corpus(images, labels, victims, other, tmp_path / "c", config=CorpusConfig(shard_images=16),
                        resume=True, progress=False)
    (tmp_path / "c" / "manifest.json").write_text("{not json")
    with pytest.raises(DataFileError, match="manifest"):
        load_corpus(tmp_path / "c")


def test_missing_shard_detected(tmp_path, clean, victims):
    _make(tmp_path / "c", clean, victims)
    next(iter((tmp_path / "c" / "shards").glob("*.parquet"))).unlink()
    with pytest.raises(DataFileError, match="missing"):
        load_corpus(tmp_path / "c")


def test_empty_cell_is_reported(tmp_path, clean, victims):
    def runner(spec, model, x, y, seed, extra):  # an attack that never moves a pixel
        return [CellResult(v, x.clone()) for v in spec.values]

    images, labels = clean
    grid = GridSpec(attacks=(AttackSpec("fgsm", (10.0,)),))
    report = generate_corpus(images, labels, victims, grid, tmp_path / "e", runner=runner, progress=False)
    assert len(report.empty_cells) == 1 and report.empty_cells[0]["success_rate"] == 0.0
    assert len(load_corpus(tmp_path / "e")) == 0


def test_split_by_clean_image():
    clean_index = np.repeat(np.arange(50), 7)
    train, test = split_by_clean_image(clean_index, 0.2, seed=3)
    assert not set(clean_index[train]) & set(clean_index[test])
    assert (train ^ test).all() and len(set(clean_index[test])) == 10
    again = split_by_clean_image(clean_index, 0.2, seed=3)
    assert (again[1] == test).all()


def test_bad_inputs(tmp_path, clean, victims):
    images, labels = clean
    with pytest.raises(InputValidationError):
        generate_corpus(images * 3, labels, victims, GRID, tmp_path / "x", progress=False)
    with pytest.raises(InputValidationError):
        generate_corpus(images, labels, {"a__b": victims["tinya"]}, GRID, tmp_path / "y", progress=False)
    with pytest.raises(DataFileError):
        load_corpus(tmp_path / "nothing")


@pytest.mark.parametrize("warm", [{}, {"warm_search_steps": 1, "warm_steps": 5}], ids=["independent", "sweep"])
def test_cw_cells_record_reached_and_margin(tmp_path, clean, victims, warm):
    grid = GridSpec(attacks=(AttackSpec("cw-l2", (5.0, 50.0), {"search_steps": 2, "steps": 10, "lr": 0.1, **warm}),))
    images, labels = clean
    config = CorpusConfig(shard_images=16, victim_params={"tinya": {"cw-l2": {"kappa_scale": 0.05}}})
    report = generate_corpus(images[:16], labels[:16], victims, grid, tmp_path / "cw", config=config,
                             progress=False)
    corpus = load_corpus(tmp_path / "cw")
    assert set(corpus.columns["hyper"]) <= {5.0, 50.0} and len(corpus) > 0
    assert (corpus.columns["margin"] > 0).all()  # stored evidence fools the victim
    assert all(c["reached"] <= c["succeeded"] for c in report.cells)
    assert corpus.manifest["config"]["victim_params"]["tinya"]["cw-l2"]["kappa_scale"] == 0.05
    assert corpus.manifest["grid"]["attacks"][0]["params"] == grid.attacks[0].params  # the schedule is recorded
