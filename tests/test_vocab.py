"""advforensics.vocab: closed vocabularies as str enums, torch-free, with the exact strings files hold."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from advforensics import vocab
from advforensics.vocab import (Answer, AttributionStage, Implementation, LearnedFeatures, Norm, OpenSetScore, ScoreRule, Stage, ThreatModel, Unit,
                                Vocab)

# The strings on disk and in JSON reports: a change here breaks old files, so each one is spelled out.
EXPECTED = {
    Norm: ("l2", "linf"),
    ThreatModel: ("white-box", "hard-label"),
    ScoreRule: ("dol", "margin", "proximity", "learned"),
    Stage: ("clean", "tracing", "field", "scaling", "controls", "collusion", "peer"),
    Answer: ("not adversarial", "unknown attack"),
    OpenSetScore: ("msp", "distance", "either"),
    Implementation: ("advforensics", "art"),
    Unit: ("eps255", "kappa", "none"),
    AttributionStage: ("corpus", "train", "errors"),
    LearnedFeatures: ("base", "squeezed"),
}


def test_every_vocabulary_is_checked() -> None:
    defined = {v for v in vars(vocab).values() if isinstance(v, type) and issubclass(v, Vocab) and v is not Vocab}
    assert defined == set(EXPECTED)
    assert set(vocab.__all__) == {"Vocab", *(cls.__name__ for cls in EXPECTED)}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda cls: cls.__name__)
def test_members_are_their_strings(cls: type[Vocab]) -> None:
    assert cls.values() == EXPECTED[cls]
    assert all(type(v) is str for v in cls.values())
    for member, value in zip(cls, EXPECTED[cls]):
        assert isinstance(member, str) and member == value and value == member
        assert member.value == value and str(member) == value and f"{member}" == value and "%s" % member == value
        assert f"{member:>20}" == f"{value:>20}"
        assert hash(member) == hash(value) and {value: 1}[member] == 1 and {member: 1}[value] == 1
        assert cls(value) is member
        assert json.dumps(member) == json.dumps(value)
        assert json.loads(json.dumps({member: [member]}, indent=1)) == {value: [value]}


def test_unknown_string_is_rejected() -> None:
    with pytest.raises(ValueError):
        Answer("unknown")
    assert "Unknown Attack" not in Answer.values()


def test_score_rules_split_into_formula_and_learned() -> None:
    assert [r.value for r in ScoreRule if r.is_formula] == ["dol", "margin", "proximity"]
    assert not ScoreRule.LEARNED.is_formula


def test_old_names_are_built_from_the_enums() -> None:
    from advforensics.tracing import names

    assert names.FORMULA_RULES == ("dol", "margin", "proximity")
    assert names.SCORE_RULES == ("dol", "margin", "proximity", "learned")
    assert names.DEFAULT_RULE == "proximity" and type(names.DEFAULT_RULE) is str
    assert names.STAGES == EXPECTED[Stage]
    assert all(type(n) is str for n in (*names.SCORE_RULES, *names.STAGES))

    from advforensics import investigation
    from advforensics.reporting import investigation as report

    assert (investigation.NOT_ADVERSARIAL, investigation.UNKNOWN) == ("not adversarial", "unknown attack")
    assert report.NOT_FAMILIES == ("not adversarial", "unknown attack")


def test_attacks_reexport_the_same_enums() -> None:
    pytest.importorskip("torch")
    from advforensics.attacks import Norm as AttacksNorm
    from advforensics.attacks.base import Norm as BaseNorm, ThreatModel as BaseThreatModel
    from advforensics.attribution import openset

    assert AttacksNorm is BaseNorm is Norm and BaseThreatModel is ThreatModel
    assert (openset.NOT_ADVERSARIAL, openset.UNKNOWN) == (Answer.NOT_ADVERSARIAL, Answer.UNKNOWN)
    assert openset.SCORES == ("msp", "distance", "either")


def test_vocab_imports_nothing_heavy() -> None:
    code = ("import sys\nimport advforensics.vocab, advforensics.tracing.names\n"
            "import advforensics.reporting.investigation\n"
            "print(sorted(m for m in ('torch', 'numpy', 'scipy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
