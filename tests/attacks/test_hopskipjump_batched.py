"""The batched HopSkipJump reproduces ART's HopSkipJump (through the adapter) on the same inputs."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from advforensics.attacks import create_attack

# ART's HopSkipJump makes four predictions of its own per example (the clean and start labels when it
# begins, the clean and final labels for its success log); the batched attack skips them.
ART_BOOKKEEPING_QUERIES = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def twelve(tiny_classifier: nn.Module, digits_data: tuple[torch.Tensor, torch.Tensor]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = digits_data
    with torch.no_grad():
        correct = (tiny_classifier(images[200:320]).argmax(1) == labels[200:320]).nonzero().flatten()[:12] + 200
    return images[correct].clone(), labels[correct].clone()


@pytest.mark.parametrize("boundary_search", [True, False])
def test_batched_hopskipjump_returns_arts_examples(tiny_classifier: nn.Module, boundary_search: bool,
                                                  twelve: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Same starts, same per-example NumPy streams, same steps: ART's output to float precision.

    A label read at a point within float noise of the boundary may differ between a 64-row and a
    large batch and send one example down another path, so a few examples may part ways; the
    rest must be ART's, with ART's query counts less its four bookkeeping predictions.
    """
    x, y = twelve
    params = {"max_iter": 6, "max_eval": 300, "init_eval": 30, "init_size": 50, "seed": 3,
              "boundary_search": boundary_search}
    art = create_attack("hopskipjump", **params)(tiny_classifier, x, y)
    batched = create_attack("hopskipjump-batched", **params)(tiny_classifier, x, y)
    assert art.success.all() and batched.success.all()
    same = (art.x_adv - batched.x_adv).flatten(1).norm(dim=1) < 1e-4
    assert int(same.sum()) >= 10, (art.x_adv - batched.x_adv).flatten(1).norm(dim=1).tolist()
    assert torch.equal(batched.queries[same], art.queries[same] - ART_BOOKKEEPING_QUERIES)


def test_an_example_does_not_depend_on_its_batch(tiny_classifier: nn.Module,
                                                 twelve: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each example draws from its own stream: attacked alone or in a batch, the same result."""
    x, y = twelve
    attack = create_attack("hopskipjump-batched", max_iter=4, max_eval=200, init_eval=20, init_size=50)
    together = attack(tiny_classifier, x[:6], y[:6])
    alone = attack(tiny_classifier, x[:6], torch.tensor([y[0], -1, -1, -1, -1, -1]))  # only row 0 is attacked
    assert alone.extras["already_adversarial"][1:].all()
    assert float((alone.x_adv[0] - together.x_adv[0]).norm()) < 1e-4
    assert int(alone.queries[0]) == int(together.queries[0])
