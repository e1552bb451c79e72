"""Hard-label attacks (boundary, hopskipjump, signopt, qeba, surfree) on the tiny digits classifier.

Runs with one torch thread: hard-label attacks make thousands of tiny forward passes, and on a shared
machine two OpenMP threads make each one tens of times slower.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from advforensics.attacks import ThreatModel, create_attack
from advforensics.attacks.queries import LabelOracle, boundary_binary_search, dct2, dct_matrix, idct2
from advforensics.attacks.qeba import subspace_directions
from advforensics.attacks.surfree import _orthonormalise, dct_directions
from advforensics.errors import InputValidationError

_spec = importlib.util.spec_from_file_location("attack_params_hardlabel",
                                               Path(__file__).with_name("attack_params_hardlabel.py"))
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
PARAMS: dict[str, dict[str, object]] = _module.PARAMS
NAMES = sorted(PARAMS)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch(tiny_classifier: nn.Module, digits_data: tuple[torch.Tensor, torch.Tensor]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Six correctly classified digits from the middle of the set."""
    images, labels = digits_data
    with torch.no_grad():
        correct = (tiny_classifier(images[300:400]).argmax(1) == labels[300:400]).nonzero().flatten()[:6] + 300
    return images[correct].clone(), labels[correct].clone()


def _query_bound(name: str, params: dict[str, object]) -> int:
    """The documented per-example query ceiling of each attack at `params`."""
    p = {**create_attack(name).params, **params}
    if name in ("qeba", "surfree"):
        return int(p["max_queries"])
    if name == "signopt":  # ART checks its limit once per iteration and omits some evaluations
        return 2 * int(p["max_queries"]) + 60
    if name == "boundary":
        return 1 + int(p["init_size"]) + int(p["max_iter"]) * int(p["num_trial"]) * int(p["sample_size"]) + 80
    # hopskipjump: estimation + per-iteration searches (about 30 each) + start + final search
    evals = sum(min(int(p["init_eval"] * t ** 0.5), int(p["max_eval"])) for t in range(1, int(p["max_iter"]) + 1))
    return 1 + int(p["init_size"]) + evals + 40 * int(p["max_iter"]) + 80


@pytest.mark.parametrize("name", NAMES)
def test_attack_fools_most_within_budget(name: str, tiny_classifier: nn.Module,
                                         batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    attack = create_attack(name, **PARAMS[name])
    assert attack.threat_model is ThreatModel.HARD_LABEL
    result = attack(tiny_classifier, x, y)
    assert result.success_rate >= 5 / 6, f"{name}: {result.success.tolist()}"
    assert 0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1
    assert (result.queries > 1).all()
    assert int(result.queries.max()) <= _query_bound(name, PARAMS[name]), result.queries.tolist()
    # a small perturbation, not a replacement of the image: far below the distance to uniform noise
    assert float(result.l2[result.success].median()) < 2.5


@pytest.mark.parametrize("name", NAMES)
def test_attack_is_deterministic_for_a_seed(name: str, tiny_classifier: nn.Module,
                                            batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:3], batch[1][:3]
    first = create_attack(name, **PARAMS[name])(tiny_classifier, x, y)
    second = create_attack(name, **PARAMS[name])(tiny_classifier, x, y)
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.queries, second.queries)
    other = create_attack(name, **{**PARAMS[name], "seed": 12345})(tiny_classifier, x, y)
    assert not torch.equal(first.x_adv, other.x_adv), "the seed has no effect"


@pytest.mark.parametrize("name", NAMES)
def test_misclassified_inputs_are_returned_unchanged(name: str, tiny_classifier: nn.Module,
                                                     batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:2], batch[1][:2]
    wrong = (y + 1) % 10  # labels the model does not predict: already "adversarial"
    result = create_attack(name, **PARAMS[name])(tiny_classifier, x, wrong)
    assert torch.equal(result.x_adv, x)
    assert result.success.all()
    assert (result.queries == 1).all()
    assert result.extras["already_adversarial"].all()


def test_hopskipjump_boundary_search_ends_on_the_boundary(tiny_classifier: nn.Module,
                                                          batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    params = PARAMS["hopskipjump"]
    tol = 1e-3
    searched = create_attack("hopskipjump", **params, boundary_search=True, boundary_tol=tol)(tiny_classifier, x, y)
    raw = create_attack("hopskipjump", **params, boundary_search=False)(tiny_classifier, x, y)
    both = searched.success & raw.success
    assert both.sum() >= 5
    assert (searched.l2[both] <= raw.l2[both] + 1e-6).all()
    assert float(searched.l2[both].median()) < float(raw.l2[both].median())
    assert (searched.queries >= raw.queries).all()  # the search's queries are counted

    def adversarial_after_stepping_back(result_x: torch.Tensor, step: float) -> torch.Tensor:
        delta = result_x - x
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        with torch.no_grad():
            return tiny_classifier(x + delta * (1 - step / norm)).argmax(1) != y

    # 3 tolerances back towards the clean image: the searched point crosses back, ART's does not
    assert not adversarial_after_stepping_back(searched.x_adv, 3 * tol)[both].any()
    assert adversarial_after_stepping_back(raw.x_adv, 3 * tol)[both].float().mean() >= 0.8


def test_qeba_and_surfree_end_within_tolerance_of_boundary(tiny_classifier: nn.Module,
                                                           batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    for name in ("qeba", "surfree"):
        result = create_attack(name, **PARAMS[name])(tiny_classifier, x, y)
        delta = result.x_adv - x
        back = x + delta * (1 - 3e-3 / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        with torch.no_grad():
            assert (tiny_classifier(back).argmax(1) == y)[result.success].all(), name


@pytest.mark.parametrize("name", ["qeba", "surfree", "hopskipjump"])
def test_only_the_label_matters(name: str, tiny_classifier: nn.Module,
                                batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Scaling the scores by 4 (exact in floating point) keeps every argmax, so nothing may change."""

    class Scaled(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return tiny_classifier(inputs) * 4.0

    x, y = batch[0][:3], batch[1][:3]
    plain = create_attack(name, **PARAMS[name])(tiny_classifier, x, y)
    scaled = create_attack(name, **PARAMS[name])(Scaled().eval(), x, y)
    assert torch.equal(plain.x_adv, scaled.x_adv)


@pytest.mark.parametrize(("name", "argument", "value"), [
    ("boundary", "step_adapt", 1.5), ("boundary", "max_iter", 0), ("boundary", "boundary_search", "yes"),
    ("hopskipjump", "init_eval", 20000), ("hopskipjump", "boundary_tol", -1.0), ("hopskipjump", "seed", -3),
    ("signopt", "k", 0), ("signopt", "max_queries", 0), ("qeba", "subspace", "wavelet"), ("qeba", "ratio", 0),
    ("qeba", "max_queries", 50), ("surfree", "theta_max", 95.0), ("surfree", "rho", 1.0),
    ("surfree", "freq_range", 0.0),
])
def test_bad_parameters_name_the_argument(name: str, argument: str, value: object) -> None:
    with pytest.raises(InputValidationError, match=argument):
        create_attack(name, **{argument: value})


def test_dct_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((2, 3, 7, 5))
    expected = scipy.fft.dctn(block, type=2, norm="ortho", axes=(-2, -1))
    got = dct2(torch.from_numpy(block))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(idct2(got).numpy(), block, atol=1e-10)
    vector = rng.standard_normal(9)
    np.testing.assert_allclose((dct_matrix(9) @ torch.from_numpy(vector)).numpy(),
                               scipy.fft.dct(vector, norm="ortho"), atol=1e-10)


def test_subspace_directions_lie_in_their_subspace() -> None:
    generator = torch.Generator().manual_seed(0)
    freq = subspace_directions((1, 8, 8), 5, "frequency", 2, generator)
    coeffs = dct2(freq.double())
    assert torch.allclose(freq.flatten(1).norm(dim=1), torch.ones(5), atol=1e-5)
    assert coeffs[:, :, 4:, :].abs().max() < 1e-6 and coeffs[:, :, :, 4:].abs().max() < 1e-6
    spatial = subspace_directions((3, 8, 8), 4, "spatial", 2, generator)
    assert spatial.shape == (4, 3, 8, 8)
    assert torch.allclose(spatial.flatten(1).norm(dim=1), torch.ones(4), atol=1e-5)
    surfree = dct_directions((1, 8, 8), 3, 0.5, generator)
    assert dct2(surfree.double())[:, :, 4:, :].abs().max() < 1e-6


def test_orthonormalise_against_history_and_direction() -> None:
    generator = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(2, 20, generator=generator), dim=1)
    history = torch.randn(2, 3, 20, generator=generator)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    history = torch.linalg.qr(history.transpose(1, 2)).Q.transpose(1, 2)  # orthonormal rows
    v = _orthonormalise(torch.randn(2, 20, generator=generator), history, mask, u)
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)
    assert (v * u).sum(1).abs().max() < 1e-5
    assert torch.einsum("ald,ad->al", history, v)[mask.bool()].abs().max() < 1e-3


def test_oracle_counts_and_binary_search_reaches_tolerance(tiny_classifier: nn.Module,
                                                           batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch[0][:3], batch[1][:3]
    oracle = LabelOracle(tiny_classifier, y)
    idx = torch.arange(3)
    far = torch.zeros_like(x)  # a blank image: adversarial for these digits?
    adv = oracle.is_adversarial(far, idx)
    assert oracle.queries.tolist() == [1, 1, 1]
    keep = adv.nonzero().flatten()
    assert len(keep) >= 1
    before = oracle.queries.clone()
    ends = boundary_binary_search(oracle, x[keep], far[keep], idx[keep], tol=1e-4)
    assert (oracle.queries[keep] > before[keep]).all()
    assert oracle.is_adversarial(ends, idx[keep]).all()
    delta = ends - x[keep]
    back = x[keep] + delta * (1 - 1e-4 / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    assert not oracle.is_adversarial(back, idx[keep]).any()


def test_qeba_full_space_is_comparable_to_art_hopskipjump(tiny_classifier: nn.Module,
                                                          batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """QEBA with ratio 1 (no subspace) is HopSkipJump: at a similar query count, similar L2 to ART's."""
    x, y = batch
    art = create_attack("hopskipjump", max_iter=8, max_eval=200, init_eval=20, init_size=50)(tiny_classifier, x, y)
    ours = create_attack("qeba", max_queries=int(art.queries.float().mean()), init_eval=20, max_eval=200,
                         ratio=1, init_size=50)(tiny_classifier, x, y)
    assert ours.success.all() and art.success.all()
    ratio = float(ours.l2.median() / art.l2.median())
    assert 0.6 < ratio < 1.5, f"median L2 ours / ART = {ratio:.2f}"
