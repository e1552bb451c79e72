"""MTAA, baselines, training, evaluation, weights files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from advforensics.attribution.baselines import ablation_config, single_task_config
from advforensics.attribution.corpus import load_corpus
from advforensics.attribution.corpus_generation import CorpusConfig, generate_corpus
from advforensics.attribution.evaluate import clean_class_rates, delta_mtl, evaluate_attributor, write_report
from advforensics.reporting.attribution_tables import false_alarm_table
from advforensics.attribution.answers import attribute
from advforensics.attribution.openset import NOT_ADVERSARIAL, UNKNOWN
from advforensics.attribution.grid import AttackSpec, GridSpec
from advforensics.attribution.mtaa import MTAA, MTAAConfig, UncertaintyWeighting
from advforensics.attribution.card import load_attributor, save_attributor
from advforensics.attribution.train import TrainConfig, train_attributor
from advforensics.errors import CheckpointError, InputValidationError, UnknownNameError


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory, digits_data, mlp_victim):
    images, labels = digits_data
    victims = {"mlp32": mlp_victim(32, 0), "mlp128": mlp_victim(128, 1)}
    grid = GridSpec(attacks=(AttackSpec("fgsm", (40.0, 120.0)),
                             AttackSpec("pgd-linf", (40.0, 120.0), {"steps": 3, "alpha_ratio": 0.5})))
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(images[:120], labels[:120], victims, grid, out, config=CorpusConfig(shard_images=120),
                    progress=False)
    return load_corpus(out)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=1, batch_size=32, width=4, pe_width=4, pe_channels=(8, 8), backbone_epochs=1, max_steps=3)
    base.update(kw)
    return TrainConfig(**base)


def test_mtaa_forward_backward_shapes():
    for size in (8, 28):
        model = MTAA(MTAAConfig(n_attacks=3, n_victims=5, in_channels=1, image_size=size, width=4, pe_width=4,
                                pe_channels=(8, 8)))
        x = torch.rand(6, 1, size, size)
        out = model(x)
        assert out["attack_logits"].shape == (6, 3) and out["victim_logits"].shape == (6, 5)
        assert out["hyper"].shape == (6,)
        assert out["pe_delta"].shape == model.pe_backbone(x).shape
        targets = {"attack": torch.randint(0, 3, (6,)), "victim": torch.randint(0, 5, (6,)),
                   "hyper": torch.rand(6) * 200}
        losses = model.losses(out, targets, model.feature_delta(x, x.clamp(0.1, 0.9)))
        assert set(losses) == {"attack", "victim", "hyper", "pe"}
        model.total_loss(losses).backward()
        assert model.weighting.log_vars.grad is not None and model.weighting.log_vars.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.pe_backbone.parameters())  # frozen


def test_uncertainty_weighting_is_kendall_and_learnable():
    w = UncertaintyWeighting(("attack", "hyper"))
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0]))
    losses = {"attack": torch.tensor(2.0), "hyper": torch.tensor(3.0)}
    expected = np.exp(-0.5) * 2 + 0.25 + 0.5 * np.exp(1.0) * 3 - 0.5
    assert float(w(losses).detach()) == pytest.approx(expected, rel=1e-6)
    plain = UncertaintyWeighting(("attack", "hyper"), learnable=False)
    assert float(plain(losses)) == pytest.approx(5.0) and not plain.log_vars.requires_grad
    # minimising over s gives s = log L (classification): the weights adapt to the losses
    opt = torch.optim.SGD([w.log_vars], lr=0.1)
    for _ in range(500):
        opt.zero_grad()
        w(losses).backward()
        opt.step()
    assert w.log_vars.detach().numpy() == pytest.approx([np.log(4.0), np.log(3.0)], abs=1e-2)


def test_variants_build():
    base = MTAAConfig(n_attacks=3, n_victims=2, image_size=8, width=4, pe_width=4, pe_channels=(8, 8))
    x = torch.rand(2, 1, 8, 8)
    for task in ("attack", "victim", "hyper"):
        out = MTAA(single_task_config(base, task))(x)
        outputs = {"attack": {"attack_logits", "attack_features"}, "victim": {"victim_logits"}, "hyper": {"hyper"}}
        assert set(k for k in out if not k.startswith("hyper_")) == outputs[task]
    for name in ("plain-sum", "uncertainty", "uncertainty+tsl", "full"):
        assert MTAA(ablation_config(base, name))(x)["attack_logits"].shape == (2, 3)
    with pytest.raises(InputValidationError):
        MTAAConfig(n_attacks=3, n_victims=2, tasks=("colour",))


def test_training_reduces_loss(tiny_corpus):
    result = train_attributor(tiny_corpus, _cfg(epochs=4, max_steps=None, batch_size=64), progress=False)
    totals = [h["total"] for h in result.history]
    assert totals[-1] < totals[0]
    assert result.card.corpus_id == tiny_corpus.corpus_id


def test_save_load_evaluate_and_predict(tiny_corpus, tmp_path):
    result = train_attributor(tiny_corpus, _cfg(), progress=False)
    path = tmp_path / "m.safetensors"
    save_attributor(result.model, result.card, path)
    model, card = load_attributor(path)
    x = tiny_corpus.float_images(slice(0, 4))
    torch.testing.assert_close(model(x)["attack_logits"], result.model(x)["attack_logits"])
    metrics = evaluate_attributor(model, card, tiny_corpus)
    assert 0 <= metrics["attack_accuracy"] <= 1 and metrics["rmse"] >= 0
    assert metrics["flops_per_image"] > 0 and metrics["n_params"] == card.n_params
    files = write_report(metrics, tmp_path / "report")
    assert all(f.exists() for f in files) and any(f.suffix == ".png" for f in files)
    records = attribute(model, card, x).records()
    assert records[0]["attack"] in [*card.attack_names, NOT_ADVERSARIAL, UNKNOWN]
    assert 0 < records[0]["attack_probability"] <= 1 and records[3]["row"] == 3
    with pytest.raises(InputValidationError, match="size"):
        attribute(model, card, torch.rand(2, 1, 28, 28))
    with pytest.raises(InputValidationError, match="channels"):
        attribute(model, card, torch.rand(2, 3, 8, 8))
    other = dataclasses.replace(card, corpus_id="0" * 64)
    with pytest.raises(CheckpointError, match="corpus"):
        evaluate_attributor(model, other, tiny_corpus)
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError):
        load_attributor(path)


def test_single_label_and_single_task_and_delta(tiny_corpus):
    single = {}
    for task, metric in (("attack", "attack_accuracy"), ("victim", "victim_accuracy"), ("hyper", "rmse")):
        r = train_attributor(tiny_corpus, _cfg(model="single-task", task=task), progress=False)
        single[metric] = evaluate_attributor(r.model, r.card, tiny_corpus)
    mtl = {"attack_accuracy": 0.9, "victim_accuracy": 0.8, "rmse": 10.0}
    fake = {"attack_accuracy": {"attack_accuracy": 0.9}, "victim_accuracy": {"victim_accuracy": 0.4},
            "rmse": {"rmse": 20.0}}
    assert delta_mtl(mtl, fake) == pytest.approx(100 * (0 + 1.0 + 0.5) / 3)
    assert isinstance(delta_mtl(mtl, single), float)
    r = train_attributor(tiny_corpus, _cfg(model="single-label"), progress=False)
    m = evaluate_attributor(r.model, r.card, tiny_corpus)
    assert {"attack_accuracy", "victim_accuracy", "rmse"} <= set(m)
    r2 = train_attributor(tiny_corpus, _cfg(model="single-label", label_mode="attack+victim"), progress=False)
    assert len(r2.model.config.joint_labels) == 4


def test_balanced_sampling_weights_classes_equally():
    from advforensics.attribution.train import _balance_weights

    targets = {"attack": torch.tensor([0, 0, 0, 1]), "victim": torch.tensor([0, 0, 0, 0])}
    w = _balance_weights(targets)
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_balanced_training_runs(tiny_corpus):
    result = train_attributor(tiny_corpus, _cfg(balance=True), progress=False)
    assert result.card.train["balance"] is True and result.card.steps == 3


def test_subset_has_its_own_vocabulary_and_evaluates_on_the_same_subset(tiny_corpus):
    sub = tiny_corpus.subset(["pgd-linf"], ["mlp128"])
    assert sub.attack_names == ["pgd-linf"] and sub.victim_names == ["mlp128"]
    expected = (tiny_corpus.columns["attack"] == "pgd-linf") & (tiny_corpus.columns["victim"] == "mlp128")
    assert len(sub) == int(expected.sum()) > 0
    assert np.array_equal(sub.images, tiny_corpus.images[expected])
    assert (sub.attack_targets() == 0).all() and (sub.victim_targets() == 0).all()
    assert sub.corpus_id != tiny_corpus.corpus_id
    assert sub.corpus_id == tiny_corpus.subset(["pgd-linf"], ["mlp128"]).corpus_id  # deterministic
    result = train_attributor(sub, _cfg(), progress=False)
    assert result.card.subset["victims"] == ["mlp128"]
    on_parent = evaluate_attributor(result.model, result.card, tiny_corpus)  # the card selects the subset
    on_subset = evaluate_attributor(result.model, result.card, sub)
    assert on_parent["n"] == on_subset["n"] and on_parent["attack_accuracy"] == on_subset["attack_accuracy"]
    with pytest.raises(UnknownNameError, match="cw-l2"):
        tiny_corpus.subset(["cw-l2"], None)
    with pytest.raises(UnknownNameError, match="resnet"):
        tiny_corpus.subset(None, ["resnet"])
    with pytest.raises(InputValidationError, match="at least one"):
        tiny_corpus.subset([], None)


def test_clean_class_rates_count_false_alarms_and_misses():
    names = ["fgsm", "pgd-linf", "clean"]
    true = np.array([2, 2, 2, 2, 0, 0, 1, 1])
    pred = np.array([2, 0, 2, 1, 0, 2, 1, 1])
    rates = clean_class_rates(pred, true, names)
    assert rates["n_clean"] == 4 and rates["n_adversarial"] == 4
    assert rates["false_alarm_rate"] == 0.5 and rates["clean_recognised_rate"] == 0.5
    assert rates["missed_rate"] == 0.25 and rates["missed_per_attack"] == {"fgsm": 0.5, "pgd-linf": 0.0}
    table = false_alarm_table([{"kind": "mtaa", "false_alarm": rates, "attack_accuracy": 0.5}])
    assert "| mtaa | 4 | 50.00 | 25.00 | fgsm 50.0, pgd-linf 0.0 |" in table


def test_training_rejects_a_device_this_machine_lacks(tiny_corpus):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputValidationError, match="CUDA"):
        train_attributor(tiny_corpus, _cfg(), progress=False, device="cuda")
    with pytest.raises(InputValidationError, match="device"):
        train_attributor(tiny_corpus, _cfg(), progress=False, device="quantum")
    result = train_attributor(tiny_corpus, _cfg(), progress=False, device="auto")
    assert result.card.train_device == "cpu"


def test_pe_backbone_can_pretrain_on_a_labelled_data_set(tiny_corpus, digits_data, caplog):
    images, labels = digits_data
    with caplog.at_level("WARNING", logger="advforensics.attribution.train"):
        result = train_attributor(tiny_corpus, _cfg(backbone_epochs=3), progress=False,
                                  backbone_data=(images, labels, "digits"))
    assert result.card.pe_backbone_data == "digits"
    assert result.card.pe_backbone_train_accuracy > 0.5  # hundreds of labelled images, not the corpus's few
    assert "PE backbone" not in caplog.text
    with caplog.at_level("WARNING", logger="advforensics.attribution.train"):
        default = train_attributor(tiny_corpus, _cfg(), progress=False)  # 1 epoch on ~96 clean images
    assert "corpus" in default.card.pe_backbone_data
    assert default.card.pe_backbone_train_accuracy < 0.5 and "--backbone-data" in caplog.text
    with pytest.raises(InputValidationError, match="backbone images"):
        train_attributor(tiny_corpus, _cfg(), progress=False, backbone_data=(torch.rand(4, 1, 28, 28),
                                                                             torch.zeros(4, dtype=torch.long), "x"))


def test_training_interrupted_after_an_epoch_resumes_to_the_uninterrupted_weights(tiny_corpus, tmp_path,
                                                                                 monkeypatch):
    from advforensics.attribution import train as train_module

    config = _cfg(epochs=3, max_steps=None, batch_size=64, augment=("jpeg:90",))
    whole = train_attributor(tiny_corpus, config, progress=False)
    real_save = train_module.save_state

    def save_then_die(path, state):  # the process dies just after the first epoch's state is written
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_state", save_then_die)
    state = tmp_path / "mtaa.train-state"
    with pytest.raises(KeyboardInterrupt):
        train_attributor(tiny_corpus, config, progress=False, checkpoint_path=state)
    monkeypatch.setattr(train_module, "save_state", real_save)
    resumed = train_attributor(tiny_corpus, config, progress=False, checkpoint_path=state)
    assert resumed.card.steps == whole.card.steps and resumed.history == whole.history
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    # a state of another config is refused in one line
    with pytest.raises(CheckpointError, match="another corpus, training config"):
        train_attributor(tiny_corpus, _cfg(epochs=2, max_steps=None, batch_size=64), progress=False,
                         checkpoint_path=state)
