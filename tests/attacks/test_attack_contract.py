"""One contract for every registered attack (timm's test_models.py habit).

Parameters come from tests/attacks/attack_params_whitebox.py and tests/attacks/attack_params_hardlabel.py; an
attack registered without an entry there fails here, so no attack goes untested.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

from advforensics.attacks import ATTACKS, Norm, create_attack, list_attacks
from advforensics.errors import InputValidationError

HERE = Path(__file__).resolve().parent
N_EXAMPLES = 8


def _load_params(file_name: str) -> dict[str, dict[str, Any]]:
    spec = importlib.util.spec_from_file_location(file_name.removesuffix(".py"), HERE / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.PARAMS)


WHITEBOX = _load_params("attack_params_whitebox.py")
HARDLABEL = _load_params("attack_params_hardlabel.py")
PARAMS = {**HARDLABEL, **WHITEBOX}


def _constructor_arguments(name: str) -> list[str]:
    signature = inspect.signature(ATTACKS.get(name).__init__)
    return [p.name for p in signature.parameters.values()
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@pytest.fixture(scope="module")
def correct_batch(tiny_classifier: torch.nn.Module, digits_data: tuple[torch.Tensor, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first N_EXAMPLES digits the tiny classifier gets right."""
    images, labels = digits_data
    with torch.no_grad():
        correct = tiny_classifier(images[:200]).argmax(dim=1) == labels[:200]
    index = correct.nonzero().squeeze(1)[:N_EXAMPLES]
    return images[index].clone(), labels[index].clone()


def test_param_files_do_not_overlap() -> None:
    assert not set(WHITEBOX) & set(HARDLABEL), "an attack has entries in both parameter files"


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_has_contract_params(name: str) -> None:
    assert name in PARAMS, (f"attack {name!r} is registered but has no entry in tests/attacks/attack_params_*.py; "
                            "add generous parameters there so the contract test covers it")
    unknown = set(PARAMS[name]) - set(_constructor_arguments(name))
    assert not unknown, f"{name}: PARAMS names arguments the constructor lacks: {sorted(unknown)}"


@pytest.mark.parametrize("name", list_attacks())
def test_attack_contract(name: str, tiny_classifier: torch.nn.Module,
                         correct_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    if name not in PARAMS:
        pytest.fail(f"attack {name!r} has no entry in tests/attacks/attack_params_*.py")
    x, y = correct_batch
    x_before = x.clone()
    parameters_before = [p.detach().clone() for p in tiny_classifier.parameters()]
    attack = create_attack(name, **PARAMS[name])
    result = attack(tiny_classifier, x, y)

    # shape, dtype, range, finiteness
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert torch.isfinite(result.x_adv).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(x, x_before), "the attack changed its input tensor"
    for before, after in zip(parameters_before, tiny_classifier.parameters()):
        assert torch.equal(before, after), "the attack changed the model's parameters"
    assert not tiny_classifier.training

    # per-example fields
    for field in ("success", "l2", "linf", "queries", "predicted"):
        assert getattr(result, field).shape == (N_EXAMPLES,), field
    assert result.queries.dtype == torch.int64 and (result.queries > 0).all()
    with torch.no_grad():
        assert torch.equal(result.predicted, tiny_classifier(result.x_adv).argmax(dim=1))
    assert torch.equal(result.success, result.predicted != y)

    # budget for norm-bounded attacks
    eps = PARAMS[name].get("eps")
    if eps is not None:
        if attack.norm is Norm.LINF:
            assert float(result.linf.max()) <= float(eps) + 1e-6
        else:
            assert float(result.l2.max()) <= float(eps) + 1e-5

    # success on most examples at the generous budget
    assert result.success_rate >= 0.75, f"{name}: success rate {result.success_rate:.2f} at {PARAMS[name]}"

    # every constructor argument is recorded, passed values verbatim
    for argument in _constructor_arguments(name):
        assert argument in result.params, f"{name}: {argument!r} missing from result.params"
    for argument, value in PARAMS[name].items():
        assert result.params[argument] == value
    assert result.params["attack"] == name


@pytest.mark.parametrize("name", list_attacks())
def test_bad_parameters_are_rejected_by_name(name: str) -> None:
    for argument in _constructor_arguments(name):
        with pytest.raises(InputValidationError, match=argument):
            create_attack(name, **{**PARAMS.get(name, {}), argument: "not-a-valid-value"})


@pytest.mark.parametrize("name", list_attacks())
def test_bad_inputs_are_rejected(name: str, tiny_classifier: torch.nn.Module,
                                 correct_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = correct_batch
    attack = create_attack(name, **PARAMS.get(name, {}))
    with_nan = x.clone()
    with_nan[0, 0, 0, 0] = float("nan")
    for bad in (with_nan, x * 2 + 0.1, x - 0.5, x[:, 0], x.to(torch.int64).float()[None]):
        with pytest.raises(InputValidationError):
            attack(tiny_classifier, bad, y)
    with pytest.raises(InputValidationError):
        attack(tiny_classifier, x, y[:-1])  # one label short
    with pytest.raises(InputValidationError):
        attack(tiny_classifier, x, y.float())  # labels must be integers
