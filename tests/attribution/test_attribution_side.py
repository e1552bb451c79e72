"""Our extensions to MTAA: the pixel histogram, the victim probe (side.py, victims.py), per-attack regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advforensics.attribution.mtaa import MTAA, MTAAConfig
from advforensics.attribution.side import VictimProbe, pixel_histogram
from advforensics.attribution.train import TrainConfig
from advforensics.attribution.victims import probe_settings
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.models import create_model

LENET = {"name": "lenet", "num_classes": 10, "in_channels": 1, "image_size": 8, "width": 0.5, "revision": 2}


def test_histogram_matches_numpy_and_shows_an_fgsm_eps():
    x = torch.randint(0, 256, (5, 1, 8, 8)).float() / 255
    expected = np.stack([np.bincount((row.numpy() * 255).round().astype(int).ravel(), minlength=256) / 64
                         for row in x])
    assert np.allclose(pixel_histogram(x).numpy() ** 2, expected, atol=1e-6)
    clean = torch.zeros(1, 1, 8, 8)
    sign = (torch.arange(64).view(1, 1, 8, 8) % 2).float()  # half the pixels pushed up
    fgsm = (clean + sign * 40 / 255).clamp(0, 1)
    hist = pixel_histogram(fgsm)[0] ** 2
    assert hist[40] == pytest.approx(0.5) and hist[0] == pytest.approx(0.5)


def _probe(n: int, scales: list[float]) -> VictimProbe:
    probe = VictimProbe([LENET] * n, scales)
    for i, model in enumerate(probe.models):
        model.load_state_dict(create_model("lenet", image_size=8, width=0.5, seed=i).state_dict())
    return probe


def test_probe_reads_the_margin_against_the_other_victims_consensus():
    probe = _probe(3, [0.5, 1.0, 2.0])
    x = torch.rand(7, 1, 8, 8)
    features, kappa = probe(x)
    assert features.shape == (7, 3, 4) and kappa.shape == (7, 3)
    logits = torch.stack([m(x) for m in probe.models], 1).detach().numpy()
    probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    for b in range(7):
        for v in range(3):
            top = logits[b, v].argmax()
            others = probs[b, [u for u in range(3) if u != v]].sum(0)
            assert features[b, v, 2].item() == float(top != others.argmax())  # fooled: others disagree
            others[top] = -1
            label = others.argmax()
            margin = logits[b, v, top] - logits[b, v, label]
            assert kappa[b, v].item() == pytest.approx(margin / [0.5, 1.0, 2.0][v], rel=1e-4, abs=1e-4)
    assert all(not p.requires_grad for p in probe.parameters())
    probe.train()
    assert not probe.training  # stays frozen


def test_victims_that_agree_are_not_fooled():
    probe = VictimProbe([LENET] * 3, [1.0] * 3)
    same = create_model("lenet", image_size=8, width=0.5, seed=0).state_dict()
    for model in probe.models:
        model.load_state_dict(same)
    features, kappa = probe(torch.rand(6, 1, 8, 8))
    assert (features[:, :, 2] == 0).all() and (kappa > 0).all()  # margin = the gap to the runner-up


def test_one_victim_probe_uses_its_runner_up():
    probe = _probe(1, [1.0])
    x = torch.rand(4, 1, 8, 8)
    _, kappa = probe(x)
    top2 = probe.models[0](x).topk(2, dim=1).values
    assert torch.allclose(kappa[:, 0], top2[:, 0] - top2[:, 1], atol=1e-5)


def test_mtaa_with_side_features_takes_precomputed_inputs():
    config = MTAAConfig(n_attacks=2, n_victims=3, image_size=8, width=4, use_pe=False, histogram=True,
                        probe_victims=["a", "b"], probe_architectures=[LENET, LENET], probe_kappa_scales=[1.0, 0.5])
    model = MTAA(config).eval()
    x = torch.rand(5, 1, 8, 8)
    side = model.side_inputs(x)
    assert side["raw"].shape == (5, 256 + 2 * 4) and side["probe_kappa"].shape == (5, 2)
    assert torch.allclose(model(x)["hyper"], model(x, side)["hyper"])
    assert MTAAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputValidationError, match="one entry per probed victim"):
        MTAAConfig(n_attacks=2, n_victims=3, probe_victims=["a"], probe_architectures=[], probe_kappa_scales=[])
    with pytest.raises(InputValidationError, match="side features"):
        TrainConfig(model="single-label", histogram=True)


def test_probe_settings_demand_the_corpus_victims_and_weights():
    manifest = {"victims": ["a", "b"], "config": {"victim_params": {"a": {"cw-l2": {"kappa_scale": 0.1}}}},
                "victim_info": {"a": {"weights_sha256": "1" * 64}, "b": {"weights_sha256": "2" * 64}}}
    models = {"a": torch.nn.Identity(), "b": torch.nn.Identity()}
    info = {"a": {"weights_sha256": "1" * 64, "architecture": LENET, "file": "a"},
            "b": {"weights_sha256": "2" * 64, "architecture": LENET, "file": "b"}}
    settings = probe_settings(manifest, models, info)
    assert settings["probe_victims"] == ["a", "b"] and settings["probe_kappa_scales"] == [0.1, 1.0]
    with pytest.raises(InputValidationError, match="corpus's victims"):
        probe_settings(manifest, {"a": models["a"]}, info)
    extra = {**models, "c": torch.nn.Identity()}  # e.g. a zoo directory for a subset: c is left out
    assert probe_settings(manifest, extra, {**info, "c": info["a"]})["probe_victims"] == ["a", "b"]
    tampered = {**info, "b": {**info["b"], "weights_sha256": "3" * 64}}
    with pytest.raises(CheckpointError, match="not the model the corpus was made on"):
        probe_settings(manifest, models, tampered)


def test_per_attack_regression_trains_the_true_attack_and_answers_the_predicted_one():
    model = MTAA(MTAAConfig(n_attacks=3, n_victims=2, image_size=8, width=4, use_pe=False, hyper_per_attack=True))
    out = model(torch.rand(4, 1, 8, 8))
    per_attack = out["hyper_per_attack"]
    predicted = out["attack_logits"].argmax(1)
    assert torch.allclose(out["hyper"], per_attack[torch.arange(4), predicted] * 100)
    truth = torch.tensor([0, 1, 2, 1])
    targets = {"attack": truth, "victim": torch.zeros(4, dtype=torch.long), "hyper": torch.tensor([10., 50., 5., 80.])}
    expected = ((per_attack[torch.arange(4), truth] - targets["hyper"] / 100) ** 2).mean()
    assert torch.allclose(model.losses(out, targets)["hyper"], expected)


def test_results_table_separates_frozen_victims_from_trained_parameters():
    from advforensics.reporting.attribution_tables import results_table

    row = {"name": "no-pe+fx", "kind": "mtaa", "attack_accuracy": 0.5, "victim_accuracy": 0.25, "rmse": 7.0,
           "rmse_per_attack": {"fgsm": 7.0}, "n_params": 4_000_000, "n_trainable_params": 150_000,
           "flops_per_image": 9}
    text = results_table([row])
    assert "| params | trained params |" in text
    assert "| no-pe+fx | 50.00 | 25.00 | 7.00 | fgsm 7.00 | 4,000,000 | 150,000 | 9 |" in text
