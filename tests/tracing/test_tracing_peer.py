"""PEER random-mask copies (Cheng et al., ICML 2023) on scikit-learn's 8x8 digits: masks, fine-tuned
heads, and data-limited tracing of HopSkipJump examples back to their source copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.tracing.peer import (
    MaskConfig,
    MaskedCopySet,
    build_masked_copies,
    draw_masks,
    peer_scores,
    split_head_trunk,
)

torch.set_num_threads(1)

NUM_COPIES = 3
NUM_ATTACKED = 15  # examples attacked per copy
TRAIN = 1200  # heads are fine-tuned on images[:TRAIN]; accuracy is measured on the rest


@pytest.fixture(scope="module")
def peer_copies(zoo_classifier, digits_data) -> MaskedCopySet:
    images, labels = digits_data
    return build_masked_copies(zoo_classifier, images[:TRAIN], labels[:TRAIN], NUM_COPIES,
                               MaskConfig(finetune_epochs=3, seed=0))


@pytest.fixture(scope="module")
def attacked(peer_copies, digits_data) -> dict[str, torch.Tensor]:
    """HopSkipJump (hard-label) on each copy: x_adv, x_clean, source copy and success, stacked."""
    from advforensics.attacks import create_attack

    images, labels = digits_data
    x, y = images[TRAIN:TRAIN + NUM_ATTACKED], labels[TRAIN:TRAIN + NUM_ATTACKED]
    attack = create_attack("hopskipjump", max_iter=5, max_eval=200, init_eval=20, seed=0)
    x_adv, success, source = [], [], []
    for i in range(NUM_COPIES):
        result = attack(peer_copies.copy(i), x, y)
        x_adv.append(result.x_adv.float())
        success.append(result.success)
        source.append(torch.full((len(x),), i))
    return {"x_adv": torch.cat(x_adv), "x_clean": x.repeat(NUM_COPIES, 1, 1, 1), "success": torch.cat(success),
            "source": torch.cat(source)}


def test_config_validation() -> None:
    MaskConfig().validate()
    for bad in (dict(mask_fraction=0.0), dict(mask_fraction=1.0), dict(mask_fraction=float("nan")),
                dict(finetune_epochs=-1), dict(finetune_epochs=1.5), dict(lr=0.0), dict(lr=float("inf")),
                dict(batch_size=0), dict(loss_weight=-1.0), dict(loss_weight=float("inf")), dict(seed=-1)):
        with pytest.raises(InputValidationError):
            MaskConfig(**bad).validate()


def test_mask_size_scales_with_input() -> None:
    config = MaskConfig()
    assert config.mask_size(3072) == 100  # the paper's CIFAR setting
    assert config.mask_size(64) == 2  # 8x8 digits
    assert MaskConfig(mask_fraction=1e-6).mask_size(64) == 1  # never zero


def test_masks_have_configured_size_and_differ(peer_copies) -> None:
    masks = peer_copies.masks
    assert masks.shape == (NUM_COPIES, 1, 8, 8) and masks.dtype == torch.bool
    assert masks.flatten(1).sum(1).tolist() == [2] * NUM_COPIES
    big = draw_masks(10, (3, 8, 8), MaskConfig(mask_fraction=0.1).mask_size(192), seed=1)
    assert big.flatten(1).sum(1).tolist() == [19] * 10
    flat = big.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(10) for j in range(i + 1, 10))
    assert torch.equal(big, draw_masks(10, (3, 8, 8), 19, seed=1))  # seeded
    assert not torch.equal(big, draw_masks(10, (3, 8, 8), 19, seed=2))


def test_split_reproduces_classifier_without_touching_it(zoo_classifier, digits_data) -> None:
    images, _ = digits_data
    before = {k: v.clone() for k, v in zoo_classifier.state_dict().items()}
    head, trunk = split_head_trunk(zoo_classifier)
    with torch.no_grad():
        assert torch.allclose(trunk(head(images[:64])), zoo_classifier(images[:64]), atol=1e-5)
    for key, value in zoo_classifier.state_dict().items():
        assert torch.equal(value, before[key])  # building copies fine-tunes deep copies only
    assert all(p.requires_grad for p in zoo_classifier.parameters())


def test_masked_positions_do_not_influence_output(peer_copies, digits_data) -> None:
    images, _ = digits_data
    x = images[TRAIN:TRAIN + 64]
    gen = torch.Generator().manual_seed(0)
    for i in range(peer_copies.num_copies):
        model, mask = peer_copies.copy(i), peer_copies.masks[i]
        noise = torch.rand(x.shape, generator=gen)
        on_mask = torch.where(mask, noise, x)  # only masked pixels changed
        off_mask = torch.where(mask, x, noise)  # only unmasked pixels changed
        with torch.no_grad():
            base = model(x)
            assert torch.equal(model(on_mask), base)
            assert (model(off_mask) - base).abs().max() > 1e-2  # the check can fail: other pixels matter


def test_copies_keep_clean_accuracy(peer_copies, zoo_classifier, digits_data) -> None:
    images, labels = digits_data
    x, y = images[TRAIN:], labels[TRAIN:]
    with torch.no_grad():
        base = (zoo_classifier(x).argmax(1) == y).float().mean().item()
    accuracy = (peer_copies.labels(x) == y[:, None]).float().mean(0)
    # measured: base 0.990, copies 0.992 / 0.990 / 0.990
    assert base > 0.9
    assert accuracy.min().item() >= base - 0.03, (base, accuracy.tolist())


def test_labels_and_float64_input(peer_copies, digits_data) -> None:
    images, _ = digits_data
    x = images[:40]
    labels = peer_copies.labels(x)
    assert labels.shape == (40, NUM_COPIES)
    for i in range(NUM_COPIES):
        model = peer_copies.copy(i)
        with torch.no_grad():
            probs = model(x)
            assert torch.allclose(probs.sum(1), torch.ones(40), atol=1e-5)
            assert torch.equal(probs.argmax(1), labels[:, i])
            assert torch.allclose(model(x.double()), probs)


def test_hard_label_attack_traced_to_source(attacked, peer_copies) -> None:
    ok = attacked["success"]
    assert ok.float().mean() > 0.8
    scores = peer_scores(peer_copies, attacked["x_adv"], attacked["x_clean"])
    assert scores.shape == (NUM_COPIES * NUM_ATTACKED, NUM_COPIES)
    accuracy = (scores.argmax(1) == attacked["source"])[ok].float().mean().item()
    # measured 1.00 (45 of 45); chance is 1/3. Without the loss term (w = 0) it measured 0.82.
    assert accuracy >= 0.7, accuracy
    no_loss = peer_scores(peer_copies, attacked["x_adv"], attacked["x_clean"], loss_weight=0.0)
    assert (no_loss.argmax(1) == attacked["source"])[ok].float().mean().item() >= 0.55


def test_scores_follow_the_paper_formula(attacked, peer_copies) -> None:
    x_adv, x = attacked["x_adv"][:5], attacked["x_clean"][:5]
    y = peer_copies.labels(x).mode(1).values
    scores = peer_scores(peer_copies, x_adv, x, labels=y, loss_weight=0.5, exclude_unfooled=False)
    for i in range(NUM_COPIES):
        mass = ((x_adv - x).abs() * peer_copies.masks[i]).flatten(1).sum(1)
        with torch.no_grad():
            ce = nn.functional.cross_entropy(peer_copies.copy(i).logits(x_adv), y, reduction="none")
        assert torch.allclose(scores[:, i], -(mass + 0.5 * ce), atol=1e-4)
    excluded = peer_scores(peer_copies, x_adv, x, labels=y)
    unfooled = peer_copies.labels(x_adv) == y[:, None]
    assert torch.isneginf(excluded[unfooled & ~unfooled.all(1, keepdim=True)]).all()
    assert torch.isfinite(excluded[~unfooled]).all()


def test_eval_mode_survives_attack(attacked, peer_copies) -> None:
    assert not peer_copies.training and not any(m.training for m in peer_copies.modules())
    model = peer_copies.copy(0)
    model.train()
    peer_copies.train(True)
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(m.training for m in peer_copies.modules())


def test_bad_inputs_raise(peer_copies, zoo_classifier, tiny_classifier, digits_data) -> None:
    images, labels = digits_data
    x = images[:4]
    with pytest.raises(InputValidationError, match="differ in shape"):
        peer_scores(peer_copies, x, images[:5])
    with pytest.raises(InputValidationError):
        peer_scores(peer_copies, x.clone().fill_(float("nan")), x)
    with pytest.raises(InputValidationError):
        peer_scores(peer_copies, x + 2.0, x)
    with pytest.raises(InputValidationError):
        peer_scores(peer_copies, x.repeat(1, 3, 1, 1), x.repeat(1, 3, 1, 1))
    with pytest.raises(InputValidationError):
        peer_scores(peer_copies, x[0], x[0])
    with pytest.raises(InputValidationError):
        peer_scores(peer_copies, x, x, labels=torch.tensor([0, 1]))
    with pytest.raises(InputValidationError):
        peer_scores(peer_copies, x, x, loss_weight=-1.0)
    with pytest.raises(InputValidationError):
        peer_copies.copy(NUM_COPIES)
    with pytest.raises(InputValidationError, match="LeNet"):
        build_masked_copies(tiny_classifier, images[:32], labels[:32], 2, MaskConfig(finetune_epochs=0))
    with pytest.raises(InputValidationError):
        build_masked_copies(zoo_classifier, images[:32], labels[:32], 0, MaskConfig(finetune_epochs=0))
    with pytest.raises(InputValidationError):
        build_masked_copies(zoo_classifier, images[:32], labels[:31], 2, MaskConfig(finetune_epochs=0))
    assert peer_scores(peer_copies, images[:0], images[:0]).shape == (0, NUM_COPIES)
