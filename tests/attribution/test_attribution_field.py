"""Attribution in the field (issue 11): variant grids, per-example parameters, architecture labels,
open-set answers with calibrated probabilities, metrics with intervals, held-out evaluation, labels in."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advforensics.attribution.corpus import load_corpus
from advforensics.attribution.corpus_generation import CorpusConfig, generate_corpus
from advforensics.attribution.answers import Attribution
from advforensics.attribution.field import Truth, field_metrics
from advforensics.attribution.grid import AttackSpec, GridSpec, field_grid, heldout_grid
from advforensics.attribution.openset import NOT_ADVERSARIAL, UNKNOWN, fit_open_set, fit_temperature
from advforensics.cli.main import cli
from advforensics.errors import CheckpointError, InputValidationError

#: A digits-sized grid with the field grid's structure: several variants per family, one drawn per image.
VARIANTS = {"attacks": [
    {"name": "fgsm", "values": [40, 80, 120]},
    {"name": "pgd-linf", "values": [40, 120], "params": {"steps": 3, "alpha_ratio": 0.5}, "variant": "r0.5-s3"},
    {"name": "pgd-linf", "values": [40, 120], "params": {"steps": 4, "alpha255": 20, "random_start": False},
     "variant": "f20-s4"},
    {"name": "cw-l2", "values": [0.5, 1.0], "params": {"search_steps": 1, "c0": 10.0, "steps": 30, "lr": 0.1},
     "variant": "c10-s30"},
    {"name": "deepfool", "values": [0], "params": {"max_iter": 20}, "variant": "art", "implementation": "art"},
    {"name": "deepfool", "values": [0], "params": {"max_iter": 20, "nb_grads": 3}, "variant": "g3"}],
    "include_clean": True, "values_per_image": 1, "variants_per_image": 1, "benign": ["noise:4"]}
#: What the field study holds out: another implementation (ART's FGSM) and a family never trained (Square).
HELDOUT = {"attacks": [
    {"name": "fgsm", "values": [60, 100], "variant": "art", "implementation": "art"},
    {"name": "square-linf", "values": [100], "params": {"max_iter": 30}, "variant": "art", "implementation": "art"}],
    "include_clean": True, "values_per_image": 1, "benign": ["jpeg:60"]}


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, digits_data):
    """Two seeds of one architecture (zoo LeNets on digits): two victims, one victim class."""
    from advforensics.models import create_model, save_model

    root = tmp_path_factory.mktemp("attr-field")
    images, labels = digits_data
    for seed in (0, 1):
        model = create_model("lenet", num_classes=10, in_channels=1, image_size=8, width=0.5, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(3):
            for batch in torch.randperm(len(images), generator=gen).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
                opt.step()
        save_model(model.eval(), root / "zoo" / f"lenet-s{seed}", {"data": "digits"})
    (root / "variants.json").write_text(json.dumps(VARIANTS))
    (root / "heldout.json").write_text(json.dumps(HELDOUT))
    return root


@pytest.fixture(scope="module")
def corpus_dir(zoo):
    out = zoo / "corpus"
    r = _run(["attribution", "corpus", "--data", "digits", "--limit", "120", "--victims", str(zoo / "zoo"),
              "--grid", str(zoo / "variants.json"), "--out", str(out), "--no-progress", "--shard-images", "60"])
    assert r.exit_code == 0, r.output
    return out


def test_field_grids_round_trip_and_refuse_bad_specs():
    for grid in (field_grid(), heldout_grid()):
        assert GridSpec.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
        assert len({a.key for a in grid.attacks}) == len(grid.attacks)
    train, held = field_grid(), heldout_grid()
    # held out means not in training: no variant key is shared, nor a strength of a family both hold
    assert not {a.key for a in train.attacks} & {a.key for a in held.attacks}
    shared = set(train.attack_names) & set(held.attack_names) - {"clean"}
    for family in shared:
        assert not set(sum((a.values for a in train.variants_of(family)), ())) & \
            set(sum((a.values for a in held.variants_of(family)), ()))
    assert "square-linf" in held.attack_names and "square-linf" not in train.attack_names
    assert train.attack_names == ["fgsm", "pgd-linf", "cw-l2", "deepfool", "clean"]
    with pytest.raises(InputValidationError, match="ART only"):
        AttackSpec("square-linf", (8.0,))
    with pytest.raises(InputValidationError, match="no strength"):
        AttackSpec("deepfool", (1.0,))
    with pytest.raises(InputValidationError, match="include_clean"):
        GridSpec(attacks=(AttackSpec("fgsm", (8.0,)),), benign=("noise:4",))
    with pytest.raises(InputValidationError, match="re-encoding"):
        GridSpec(attacks=(AttackSpec("fgsm", (8.0,)),), include_clean=True, benign=("jpeg:x",))
    with pytest.raises(InputValidationError, match="duplicate"):
        GridSpec(attacks=(AttackSpec("pgd-linf", (8.0,), variant="a"), AttackSpec("pgd-linf", (9.0,), variant="a")))


def test_variant_corpus_rows_labels_and_params(corpus_dir):
    corpus = load_corpus(corpus_dir)
    c = corpus.columns
    # the victim label is the architecture: two seeds, one class
    assert corpus.victim_names == ["lenet", "clean"]
    assert set(c["victim"]) == {"lenet-s0", "lenet-s1", "clean"}
    assert set(corpus.victim_targets()) == {0, 1}
    assert corpus.attack_names == ["fgsm", "pgd-linf", "cw-l2", "deepfool", "clean"]
    adversarial = c["attack"] != "clean"
    # one variant of each family and one value per clean image and victim
    per = collections.Counter(zip(c["victim"][adversarial], c["clean_index"][adversarial], c["attack"][adversarial]))
    assert max(per.values()) == 1
    assert {"pgd-linf~r0.5-s3", "pgd-linf~f20-s4"} <= set(c["variant"])
    for row in np.flatnonzero(adversarial):
        params = json.loads(c["params"][row])
        assert params["variant"] == c["variant"][row] and params["implementation"] == c["implementation"][row]
        assert params["value"] == pytest.approx(float(c["hyper"][row]))
    assert set(c["implementation"][c["attack"] == "deepfool"]) == {"art", "advforensics"}
    assert (c["hyper"][c["attack"] == "deepfool"] == 0).all()
    # every stored row fools its victim and holds its stated strength
    assert c["success"][adversarial].all() and c["reached"].all()
    cw = c["attack"] == "cw-l2"
    assert cw.any() and (c["margin"][cw] > 0).all()
    # clean rows: each image as it is and once per benign change
    clean = c["attack"] == "clean"
    assert collections.Counter(c["variant"][clean]) == {"none": 120, "noise:4": 120}
    cells = corpus.manifest["cells"]
    assert all(cell["stored"] <= cell["reached"] <= cell["succeeded"] <= cell["attempted"] for cell in cells)


def test_unreached_cw_examples_are_dropped_unless_kept(tmp_path, digits_data, mlp_victim):
    images, labels = digits_data
    grid = GridSpec(attacks=(AttackSpec("cw-l2", (6.0,), {"search_steps": 1, "c0": 0.5, "steps": 5, "lr": 0.05}),))
    victims = {"mlp": mlp_victim(32, 0)}
    kept = generate_corpus(images[:64], labels[:64], victims, grid, tmp_path / "kept", progress=False,
                           config=CorpusConfig(keep_unreached=True))
    dropped = generate_corpus(images[:64], labels[:64], victims, grid, tmp_path / "dropped", progress=False)
    kept_rows = load_corpus(tmp_path / "kept").columns["reached"]
    assert (~kept_rows).any()  # a weak schedule fools without reaching kappa 6 ...
    assert load_corpus(tmp_path / "dropped").columns["reached"].all()  # ... and those rows are not stored
    assert dropped.n_examples == int(kept_rows.sum()) and kept.n_examples > dropped.n_examples


def test_temperature_and_threshold_keep_their_promise():
    rng = np.random.default_rng(0)
    n, k, t_true = 6000, 5, 2.5
    logits = rng.normal(0, 3, (n, k))
    logits[np.arange(n), rng.integers(0, k, n)] += 6
    probs = np.exp(logits / t_true) / np.exp(logits / t_true).sum(1, keepdims=True)
    targets = np.array([rng.choice(k, p=p) for p in probs])
    assert fit_temperature(logits[:3000], targets[:3000]) == pytest.approx(t_true, rel=0.15)
    rule = fit_open_set(logits[:3000], targets[:3000], None, None, target_false_abstention=0.05)
    assert rule.calibration_false_abstention <= 0.05
    fresh = rule.attack_probs(logits[3000:]).max(1) < rule.threshold  # unseen rows of the same kind
    assert 0.035 <= fresh.mean() <= 0.065
    names = ["fgsm", "pgd-linf", "cw-l2", "deepfool", "clean"]
    answers = rule.answers(np.array([[0, 0, 0, 0, 20.0], [20.0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0]]), names)
    assert answers == [NOT_ADVERSARIAL, "fgsm", UNKNOWN]


def test_field_metrics_count_what_they_say():
    names = ["fgsm", "cw-l2", "clean"]
    answers = ["fgsm", "cw-l2", UNKNOWN, "fgsm", UNKNOWN, NOT_ADVERSARIAL, "fgsm"]
    truth = Truth(attack=np.array(["fgsm", "cw-l2", "fgsm", "square-linf", "square-linf", "clean", "clean"],
                                  dtype=object),
                  victim=np.array(["lenet", "vgg16", "lenet", "lenet", "lenet", "clean", "clean"], dtype=object),
                  hyper=np.array([40.0, 2.0, 40.0, 80.0, 80.0, np.nan, np.nan]),
                  groups={"variant": np.array(list("abcdeff"), dtype=object)})
    att = Attribution(attack=answers, attack_probability=np.array([0.995, 0.9, 0.4, 0.999, 0.3, 0.99, 0.5]),
                      attack_probs=np.zeros((7, 3)), victim=["lenet", "lenet", "lenet", "lenet", "lenet", "x", "x"],
                      victim_probability=np.ones(7), hyper=np.array([43.0, 3.0, np.nan, 70.0, np.nan, np.nan, np.nan]),
                      hyper_unit=[""] * 7, attack_names=names, victim_names=["lenet", "vgg16", "clean"])
    m = field_metrics(att, truth, group_by=("variant",))
    assert (m["attack_accuracy"]["hits"], m["attack_accuracy"]["n"]) == (2, 3)
    assert (m["false_abstention"]["hits"], m["false_abstention"]["n"]) == (1, 3)
    assert (m["unknown_called_unknown"]["hits"], m["unknown_called_unknown"]["n"]) == (1, 2)
    assert (m["clean_called_not_adversarial"]["hits"], m["clean_called_not_adversarial"]["n"]) == (1, 2)
    assert (m["victim_accuracy"]["hits"], m["victim_accuracy"]["n"]) == (4, 5)
    assert m["rmse"]["fgsm"]["rmse"] == pytest.approx(3.0) and m["rmse"]["cw-l2"]["rmse"] == pytest.approx(1.0)
    # confident answers (p >= 0.99): fgsm right, square called fgsm wrong, clean right
    assert (m["confident_wrong"]["hits"], m["confident_wrong"]["n"]) == (1, 3)
    low, high = m["attack_accuracy"]["low"], m["attack_accuracy"]["high"]
    assert low < 2 / 3 < high
    assert m["groups"]["variant"]["f"]["n"] == 2 and m["groups"]["variant"]["f"]["expected"] == NOT_ADVERSARIAL


def test_train_calibrate_evaluate_heldout_and_predict_with_labels(zoo, corpus_dir, tmp_path):
    heldout = tmp_path / "heldout"
    r = _run(["attribution", "corpus", "--data", "digits", "--start", "120", "--limit", "60", "--victims",
              str(zoo / "zoo"), "--grid", str(zoo / "heldout.json"), "--out", str(heldout), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert set(load_corpus(heldout).columns["clean_index"]) == set(range(120, 180))  # images the corpus never saw
    model = tmp_path / "m.safetensors"
    r = _run(["attribution", "train", "--corpus", str(corpus_dir), "--out", str(model), "--epochs", "2", "--width",
              "4", "--no-pe", "--histogram", "--hyper-per-attack", "--test-fraction", "0.4",
              "--calibration-fraction", "0.25", "--augment", "jpeg:75", "--probe-victims", str(zoo / "zoo"),
              "--probe-siblings", "--no-progress"])
    assert r.exit_code == 0, r.output
    card = json.loads(model.with_suffix(".json").read_text())  # the card's JSON copy, as a user reads it
    assert card["train"]["augment"] == ["jpeg:75"] and card["train"]["probe_siblings"]
    r = _run(["attribution", "train", "--corpus", str(corpus_dir), "--out", str(tmp_path / "x.safetensors"),
              "--augment", "gif", "--no-progress"])
    assert r.exit_code == 2 and "re-encoding" in r.output and not (tmp_path / "x.safetensors").exists()
    rule = card["open_set"]
    assert rule["n_calibration"] == card["n_calibration"] > 0 and rule["calibration_false_abstention"] <= 0.03
    assert rule["attack_temperature"] > 0 and 0 <= rule["threshold"] <= 1
    r = _run(["attribution", "evaluate", "--corpus", str(corpus_dir), "--model", str(model), "--out",
              str(tmp_path / "report"), "--heldout", str(heldout), "--reencode", "jpeg:90",
              "--json", str(tmp_path / "eval.json")])
    assert r.exit_code == 0, r.output
    field = json.loads((tmp_path / "eval.json").read_text())["field"]
    assert set(field) == {"test split", "test split, jpeg:90", "heldout"}
    assert field["heldout"]["n_unknown_family"] > 0 and field["heldout"]["n_clean"] == 120
    assert field["test split"]["n_unknown_family"] == 0 and field["test split"]["n_known"] > 0
    report = (tmp_path / "report" / "field.md").read_text()
    assert "heldout: per variant" in report and "square-linf~art" in report
    # a re-encoding that does not exist is refused before any work
    r = _run(["attribution", "evaluate", "--corpus", str(corpus_dir), "--model", str(model), "--out",
              str(tmp_path / "r2"), "--reencode", "gif"])
    assert r.exit_code == 2 and "re-encoding" in r.output
    # predict with a labels file: metrics out, and each prediction carries its row
    corpus = load_corpus(heldout)
    rows = np.flatnonzero(corpus.columns["attack"] != "clean")[:12]
    np.savez(tmp_path / "ev.npz", x_adv=corpus.images[rows])
    labels = tmp_path / "labels.csv"
    labels.write_text("row,attack,victim,strength\n" + "".join(
        f"{i},{corpus.columns['attack'][r]},lenet,{corpus.columns['hyper'][r]}\n" for i, r in enumerate(rows)))
    r = _run(["attribution", "predict", "--model", str(model), str(tmp_path / "ev.npz"), "--labels", str(labels),
              "--json", str(tmp_path / "pred.json")])
    assert r.exit_code == 0, r.output
    payload = json.loads((tmp_path / "pred.json").read_text())
    assert [p["row"] for p in payload["predictions"]] == list(range(12))
    assert payload["metrics"]["n"] == 12 and "attack (known families)" in r.output
    assert all(p["attack"] in ("fgsm", "pgd-linf", "cw-l2", "deepfool", NOT_ADVERSARIAL, UNKNOWN)
               for p in payload["predictions"])
    # a labels file that misses a row is one clear error
    labels.write_text("row,attack,victim\n0,fgsm,lenet\n")
    r = _run(["attribution", "predict", "--model", str(model), str(tmp_path / "ev.npz"), "--labels", str(labels)])
    assert r.exit_code == 2 and "no row 1" in r.output and "Traceback" not in r.output
    # an attributor file whose weights were changed is refused
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(model), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(model))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    forged = tmp_path / "forged.safetensors"
    save_file(tensors, str(forged), metadata=metadata)
    from advforensics.attribution.card import load_attributor

    with pytest.raises(CheckpointError, match="do not match"):
        load_attributor(forged)
    r = _run(["attribution", "predict", "--model", str(forged), str(tmp_path / "ev.npz")])
    assert r.exit_code != 0 and "do not match" in r.output
    # palette, 1-bit and 16-bit PNGs of a grey digit read as the grey image they show
    from PIL import Image

    digit = corpus.images[rows[0], 0]  # (8, 8) uint8
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(digit).convert("P").save(folder / "a_palette.png")
    Image.fromarray(((digit > 127) * 255).astype(np.uint8)).convert("1").save(folder / "b_onebit.png")
    Image.fromarray(digit.astype(np.uint16) * 257).save(folder / "c_sixteen.png")
    r = _run(["attribution", "predict", "--model", str(model), str(folder), "--as-json"])
    assert r.exit_code == 0, r.output
    assert [p["row"] for p in json.loads(r.output)] == [0, 1, 2]
    Image.fromarray(np.stack([digit, 255 - digit, digit], axis=2)).save(folder / "d_colour.png")
    r = _run(["attribution", "predict", "--model", str(model), str(folder)])
    assert r.exit_code == 2 and "colour" in r.output
    # an empty evidence folder is an error
    (tmp_path / "empty").mkdir()
    r = _run(["attribution", "predict", "--model", str(model), str(tmp_path / "empty")])
    assert r.exit_code == 2


def test_probe_siblings_hide_each_rows_own_victim():
    """In training a row's own victim slot shows its same-architecture sibling; other slots stay."""
    from advforensics.attribution.mtaa import MTAAConfig
    from advforensics.attribution.train import _hide_own_victim

    arch = {"name": "lenet", "num_classes": 10, "in_channels": 1, "image_size": 8}
    config = MTAAConfig(n_attacks=2, n_victims=3, image_size=8, probe_victims=["a0", "a1", "b0"],
                        probe_architectures=[arch] * 3, probe_kappa_scales=[1.0] * 3, probe_victim_classes=[0, 0, 1])
    raw = torch.arange(3 * 12, dtype=torch.float32).view(3, 12)  # 3 rows x 3 slots x 4 features
    kappa = torch.tensor([[1.0, 2.0, 3.0]] * 3)
    side = {"raw": raw.clone(), "probe_kappa": kappa.clone()}
    _hide_own_victim(side, config, np.array(["a0", "a1", "b0"], dtype=object))
    assert torch.equal(side["raw"][0, 0:4], raw[0, 4:8]) and torch.equal(side["raw"][0, 4:], raw[0, 4:])
    assert torch.equal(side["raw"][1, 4:8], raw[1, 0:4]) and side["probe_kappa"][1, 1] == 1.0
    assert torch.equal(side["raw"][2], raw[2])  # b0 has no sibling: unchanged


def test_distance_score_abstains_far_from_every_class_at_its_promised_rate():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0] * 8, [6.0] * 8])
    targets = rng.integers(0, 2, 8000)
    features = centres[targets] + rng.normal(0, 1, (8000, 8))
    logits = np.stack([-np.linalg.norm(features - c, axis=1) for c in centres], axis=1)
    rule = fit_open_set(logits[4000:6000], targets[4000:6000], None, None, 0.05, features=features[4000:6000],
                        train_features=features[:4000], train_targets=targets[:4000], score="distance")
    assert rule.score == "distance" and rule.calibration_false_abstention <= 0.055
    fresh = rule.abstains(logits[6000:], features[6000:])
    assert 0.035 <= fresh.mean() <= 0.065
    far = np.full((10, 8), 30.0)  # confident for class 1 by the logits, far from both classes
    far_logits = np.stack([-np.linalg.norm(far - c, axis=1) for c in centres], axis=1)
    assert rule.abstains(far_logits, far).all()
    assert not rule.with_score("msp").abstains(far_logits * 10, far).any()  # the head alone is sure
    restored = type(rule).from_dict(json.loads(json.dumps(rule.to_dict())))
    assert np.array_equal(restored.abstains(logits[6000:], features[6000:]), fresh)
    either = rule.with_score("either")  # the union, each score at half the rate
    union = either.abstains(logits[6000:], features[6000:])
    assert 0.015 <= union.mean() <= 0.065 and either.abstains(far_logits, far).all()  # within the target


def test_clean_recall_sets_the_not_adversarial_operating_point():
    rng = np.random.default_rng(2)
    n = 4000
    targets = rng.integers(0, 3, n)  # class 2 is clean
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), targets] += 2.0
    names = ["fgsm", "cw-l2", "clean"]
    plain = fit_open_set(logits[:2000], targets[:2000], None, None, 0.0)
    rule = fit_open_set(logits[:2000], targets[:2000], None, None, 0.0, clean_class=2, target_clean_recall=0.99)
    assert rule.clean_threshold is not None and rule.target_clean_recall == 0.99
    fresh = np.array(rule.answers(logits[2000:], names))
    clean = targets[2000:] == 2
    assert (fresh[clean] == NOT_ADVERSARIAL).mean() >= 0.97  # the stated recall holds on unseen rows
    before = np.array(plain.answers(logits[2000:], names))
    assert (fresh[clean] == NOT_ADVERSARIAL).mean() > (before[clean] == NOT_ADVERSARIAL).mean()
    assert set(fresh[fresh != NOT_ADVERSARIAL]) <= {"fgsm", "cw-l2"}  # the rest name a family, never "clean"
    assert json.loads(json.dumps(rule.to_dict()))["clean_threshold"] == rule.clean_threshold


def test_art_runner_makes_each_family_at_its_stated_strength(tiny_classifier, digits_data):
    """ART's FGSM/PGD stay inside their eps ball, its C&W holds its kappa where it succeeds."""
    from advforensics.attacks.cw import logit_margin
    from advforensics.attribution.art_runner import run_art_values

    images, labels = digits_data
    x, y = images[:24], labels[:24]
    for family, params in (("fgsm", {}), ("pgd-linf", {"eps_step_ratio": 0.25, "max_iter": 5, "num_random_init": 1})):
        outs = run_art_values(family, (20.0, 60.0), params, tiny_classifier, x, y, seed=0)
        for eps, out in zip((20.0, 60.0), outs):
            assert out.shape == x.shape and (out - x).abs().max() <= eps / 255 + 1e-6
        assert (tiny_classifier(outs[1]).argmax(1) != y).float().mean() > (tiny_classifier(outs[0]).argmax(1) != y
                                                                            ).float().mean() - 1e-9
    (cw,) = run_art_values("cw-l2", (2.0,), {"max_iter": 20, "binary_search_steps": 2, "learning_rate": 0.05,
                                              "initial_const": 1.0}, tiny_classifier, x, y, seed=0)
    margin = logit_margin(tiny_classifier(cw), y)
    fooled = tiny_classifier(cw).argmax(1) != y
    assert fooled.any() and (margin[fooled] >= 2.0 - 1e-3).float().mean() >= 0.9
    again = run_art_values("pgd-linf", (60.0,), {"eps_step_ratio": 0.25, "max_iter": 5, "num_random_init": 1},
                           tiny_classifier, x, y, seed=0)[0]
    assert torch.equal(again, run_art_values("pgd-linf", (60.0,), {"eps_step_ratio": 0.25, "max_iter": 5,
                                                                   "num_random_init": 1},
                                             tiny_classifier, x, y, seed=0)[0])  # seeded random starts
