import pytest

from advforensics.errors import UnknownNameError
from advforensics.registry import Registry


def test_register_and_lookup_is_case_insensitive() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("Alpha")(1)
    assert registry.get("ALPHA") == 1
    assert "alpha" in registry and registry.names() == ["alpha"]


def test_unknown_name_lists_known_names() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("alpha")(1)
    with pytest.raises(UnknownNameError, match="unknown thing 'beta'; known: alpha"):
        registry.get("beta")


def test_duplicate_registration_fails() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("alpha")(1)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("alpha")(2)
