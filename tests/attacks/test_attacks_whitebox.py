"""White-box attacks against the Adversarial Robustness Toolbox on the same inputs, and C&W's kappa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from advforensics.attacks import create_attack
from advforensics.attacks.cw import cw_kappa_sweep, kappa_scale_for, logit_margin
from advforensics.attacks.fgsm import fgsm_multi_eps, fgsm_multi_eps_adv
from advforensics.errors import InputValidationError

art_classification = pytest.importorskip("art.estimators.classification")
art_evasion = pytest.importorskip("art.attacks.evasion")


@pytest.fixture(scope="module")
def batch(tiny_classifier: nn.Module, digits_data: tuple[torch.Tensor, torch.Tensor]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """32 correctly classified digits."""
    images, labels = digits_data
    with torch.no_grad():
        correct = tiny_classifier(images[:300]).argmax(dim=1) == labels[:300]
    index = correct.nonzero().squeeze(1)[:32]
    return images[index].clone(), labels[index].clone()


def art_classifier(model: nn.Module) -> object:
    # reduction="sum": each example's gradient is its own, as in our attacks (the sign is unaffected
    # either way; the L2 step direction differs only through ART's tolerance terms)
    return art_classification.PyTorchClassifier(
        model=model, loss=nn.CrossEntropyLoss(reduction="sum"), input_shape=(1, 8, 8), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu")


def test_fgsm_matches_art(tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    for eps in (0.05, 0.2):
        ours = create_attack("fgsm", eps=eps)(tiny_classifier, x, y).x_adv.numpy()
        art = art_evasion.FastGradientMethod(art_classifier(tiny_classifier), norm=np.inf, eps=eps,
                                             batch_size=64).generate(x=x.numpy(), y=y.numpy())
        assert np.abs(ours - art).max() <= 1e-6


def test_fgsm_multi_eps_identical_to_one_call_per_eps(tiny_classifier: nn.Module,
                                                       batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    epsilons = [i / 255 for i in range(1, 21)]
    multi = fgsm_multi_eps(tiny_classifier, x, y, epsilons)
    stacked = fgsm_multi_eps_adv(tiny_classifier, x, y, epsilons)  # (E, B, C, H, W)
    assert len(multi) == 20 and stacked.shape == (20, *x.shape)
    for eps, result, adv in zip(epsilons, multi, stacked):
        single = create_attack("fgsm", eps=eps)(tiny_classifier, x, y)
        assert torch.equal(result.x_adv, single.x_adv)
        assert torch.equal(adv, single.x_adv)
        assert torch.equal(result.success, single.success)
        assert result.params == single.params
    rates = [r.success_rate for r in multi]
    assert rates[-1] > rates[0]  # a larger budget fools more often


def test_fgsm_multi_eps_rejects_bad_epsilon(tiny_classifier: nn.Module,
                                            batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    with pytest.raises(InputValidationError, match=r"epsilons\[1\]"):
        fgsm_multi_eps(tiny_classifier, x, y, [0.1, 8.0])
    with pytest.raises(InputValidationError, match="epsilons"):
        fgsm_multi_eps(tiny_classifier, x, y, [])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_art(norm: str, tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    eps, alpha = (0.1, 0.02) if norm == "linf" else (1.0, 0.2)
    ours = create_attack(f"pgd-{norm}", eps=eps, alpha=alpha, steps=10, random_start=False)(tiny_classifier, x, y)
    art = art_evasion.ProjectedGradientDescent(
        art_classifier(tiny_classifier), norm=np.inf if norm == "linf" else 2, eps=eps, eps_step=alpha,
        max_iter=10, num_random_init=0, batch_size=64, verbose=False).generate(x=x.numpy(), y=y.numpy())
    assert np.abs(ours.x_adv.numpy() - art).max() <= 1e-6
    assert (ours.queries == 10).all()


def test_pgd_random_start_is_seeded(tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    run = lambda seed: create_attack("pgd-linf", eps=0.1, alpha=0.02, steps=3, seed=seed)(tiny_classifier, x, y)  # noqa: E731
    assert torch.equal(run(1).x_adv, run(1).x_adv)
    assert not torch.equal(run(1).x_adv, run(2).x_adv)


def test_attacks_leave_parameter_gradients_alone(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # parameters require grad
    for name, params in (("fgsm", {}), ("pgd-l2", {"steps": 2}), ("cw-l2", {"search_steps": 1, "steps": 3})):
        create_attack(name, **params)(model, x, y)
        assert all(p.grad is None for p in model.parameters()), name
    assert model.training  # the base restores the mode it found


@pytest.mark.parametrize(("name", "argument", "value"), [
    ("fgsm", "eps", 8.0), ("fgsm", "eps", -0.1), ("pgd-linf", "steps", -1), ("pgd-linf", "steps", 2.5),
    ("pgd-l2", "alpha", 0.0), ("pgd-linf", "random_start", "yes"), ("cw-l2", "kappa", -1.0),
    ("cw-l2", "kappa_scale", 0.0), ("cw-l2", "search_steps", 0), ("cw-l2", "lr", float("nan")),
])
def test_bad_parameter_names_the_argument(name: str, argument: str, value: object) -> None:
    with pytest.raises(InputValidationError, match=argument):
        create_attack(name, **{argument: value})


def test_cw_kappa_shapes_the_example(tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:12], batch[1][:12]
    kappas = [0.0, 2.0, 5.0, 10.0, 20.0]
    results = [create_attack("cw-l2", kappa=k, search_steps=4, steps=60, lr=0.1)(tiny_classifier, x, y)
               for k in kappas]
    for kappa, result in zip(kappas, results):
        reached = result.extras["reached"]
        assert reached.float().mean() >= 0.9, f"kappa {kappa}: reached {reached.float().mean():.2f}"
        assert (result.extras["margin"][reached] >= kappa - 1e-4).all()
        assert result.success[reached].all()
        with torch.no_grad():  # extras report the margin of the returned example
            assert torch.allclose(result.extras["margin"], logit_margin(tiny_classifier(result.x_adv), y), atol=1e-4)
    for first, second in zip(results, results[1:]):
        assert not torch.equal(first.x_adv, second.x_adv)
        assert first.l2.median() < second.l2.median()
    medians = [float(r.extras["margin"].median()) for r in results]
    assert medians == sorted(medians)
    kappa_column = torch.tensor(kappas).repeat_interleave(len(y))
    margins = torch.cat([r.extras["margin"] for r in results])
    assert float(torch.corrcoef(torch.stack([kappa_column, margins]))[0, 1]) > 0.95


def test_cw_kappa_sweep_reuses_work_and_keeps_kappa_meaningful(
        tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:12], batch[1][:12]
    kappas = [10.0, 0.0, 20.0, 2.0, 5.0]  # any order: results come back in the order given
    schedule = {"search_steps": 4, "steps": 60, "lr": 0.1}
    sweep = cw_kappa_sweep(tiny_classifier, x, y, kappas, warm_search_steps=2, warm_steps=30, **schedule)
    alone = {k: create_attack("cw-l2", kappa=k, **schedule)(tiny_classifier, x, y) for k in (0.0, 20.0)}
    assert [r.params["kappa"] for r in sweep] == kappas
    by_kappa = dict(zip(kappas, sweep))
    assert torch.equal(by_kappa[0.0].x_adv, alone[0.0].x_adv)  # the smallest kappa is an ordinary call
    for kappa, result in by_kappa.items():
        reached = result.extras["reached"]
        assert reached.float().mean() >= 0.9, f"kappa {kappa}: reached {reached.float().mean():.2f}"
        assert (result.extras["margin"][reached] >= kappa - 1e-4).all()
        with torch.no_grad():
            assert torch.allclose(result.extras["margin"], logit_margin(tiny_classifier(result.x_adv), y), atol=1e-4)
    ordered = [by_kappa[k] for k in sorted(kappas)]
    for first, second in zip(ordered, ordered[1:]):
        assert not torch.equal(first.x_adv, second.x_adv)
        assert first.extras["margin"].median() < second.extras["margin"].median()
        assert (second.queries == first.queries + 2 * 30).all()  # the chain's queries are counted
    # the warm start lands where a search from scratch lands: median L2 within 10% at the top kappa
    assert float(by_kappa[20.0].l2.median()) <= 1.1 * float(alone[20.0].l2.median())
    total = sum(int(r.queries[0]) for r in ordered[:1]) + 2 * 30 * (len(kappas) - 1)
    assert total < 0.5 * len(kappas) * 4 * 60  # less than half the work of independent calls


def test_cw_kappa_sweep_rejects_bad_arguments(tiny_classifier: nn.Module,
                                              batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:2], batch[1][:2]
    with pytest.raises(InputValidationError, match="kappas"):
        cw_kappa_sweep(tiny_classifier, x, y, [])
    with pytest.raises(InputValidationError, match="warm_steps"):
        cw_kappa_sweep(tiny_classifier, x, y, [1.0, 2.0], warm_steps=0)
    with pytest.raises(InputValidationError, match="kappa"):
        cw_kappa_sweep(tiny_classifier, x, y, [1.0], kappa=3.0)
    attack = create_attack("cw-l2", kappa=1.0, search_steps=1, steps=2)
    with pytest.raises(InputValidationError, match="c_start"):
        attack.starting_from(x, torch.ones(3))
    with pytest.raises(InputValidationError, match="start"):
        attack.starting_from(x[:1], torch.ones(1))(tiny_classifier, x, y)


def test_cw_kappa_scale_is_kappa_times_scale(tiny_classifier: nn.Module,
                                              batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:6], batch[1][:6]
    a = create_attack("cw-l2", kappa=10.0, kappa_scale=0.5, search_steps=2, steps=20)(tiny_classifier, x, y)
    b = create_attack("cw-l2", kappa=5.0, kappa_scale=1.0, search_steps=2, steps=20)(tiny_classifier, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert a.params["kappa"] == 10.0 and a.params["kappa_scale"] == 0.5  # the nominal kappa stays the label
    assert torch.allclose(a.extras["kappa_eff"], torch.full((6,), 5.0))


def test_cw_scaled_grid_stays_reachable(tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:10], batch[1][:10]
    scale = kappa_scale_for(tiny_classifier, x, y, quantile=0.1, nominal_max=100.0, steps=60)
    assert 0 < scale
    half, top = (create_attack("cw-l2", kappa=k, kappa_scale=scale, search_steps=4, steps=60, lr=0.1)(
        tiny_classifier, x, y) for k in (50.0, 100.0))
    assert half.extras["reached"].float().mean() >= 0.9
    assert top.extras["margin"].median() > half.extras["margin"].median() + 0.4 * 50 * scale


def test_cw_unreachable_kappa_is_flagged_not_clean(tiny_classifier: nn.Module,
                                                  batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:6], batch[1][:6]
    result = create_attack("cw-l2", kappa=1e4, search_steps=2, steps=30, lr=0.1)(tiny_classifier, x, y)
    assert not result.extras["reached"].any()
    with torch.no_grad():
        clean_margin = logit_margin(tiny_classifier(x), y)
    assert (result.extras["margin"] > clean_margin + 1.0).all()  # the largest-margin iterate, not x
    assert (result.l2 > 0.1).all()


@pytest.mark.slow
def test_cw_against_art_carlini_l2(tiny_classifier: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Same inputs, kappa 0: ours succeeds at least as often as ART's with no larger median L2."""
    x, y = batch[0][:16], batch[1][:16]
    ours = create_attack("cw-l2", kappa=0.0, search_steps=5, steps=100, lr=0.05)(tiny_classifier, x, y)
    art_x = art_evasion.CarliniL2Method(
        art_classifier(tiny_classifier), confidence=0.0, learning_rate=0.05, binary_search_steps=5,
        max_iter=100, initial_const=1.0, batch_size=16, verbose=False).generate(x=x.numpy(), y=y.numpy())
    art_x = torch.from_numpy(art_x)
    with torch.no_grad():
        art_success = tiny_classifier(art_x).argmax(dim=1) != y
    art_l2 = (art_x - x).flatten(1).norm(dim=1)
    assert ours.success.float().mean() >= art_success.float().mean()
    both = ours.success & art_success
    assert both.any()
    assert ours.l2[both].median() <= art_l2[both].median() * 1.05


@pytest.mark.parametrize("nb_grads", [10, 3])
def test_deepfool_matches_art(nb_grads: int, tiny_classifier: nn.Module,
                              batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The batched torch DeepFool takes ART's steps (same candidates, overshoot, clipping)."""
    x, y = batch
    ours = create_attack("deepfool", overshoot=0.02, max_iter=50, nb_grads=nb_grads)(tiny_classifier, x, y)
    art = art_evasion.DeepFool(art_classifier(tiny_classifier), epsilon=0.02, max_iter=50, nb_grads=nb_grads,
                               batch_size=64, verbose=False).generate(x=x.numpy())
    assert np.abs(ours.x_adv.numpy() - art).max() <= 1e-4
    assert ours.success.float().mean() >= 0.9
