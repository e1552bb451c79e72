"""Tracing in the field: attacker behaviours, the learned rule, honest pooling and mixed evidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.tracing.behaviours import along, smallest_push, transfer_seeking
from advforensics.tracing.calibration import min_norm_points
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.reports import LearnedReport, trace_learned
from advforensics.tracing.learned import (FitConfig, SimulationConfig, fit_learned_rule, scorer_from_dict,
                                          scorer_to_dict, simulate)
from advforensics.tracing.permutations import make_permutations
from advforensics.tracing.record import load_copies, read_record
from advforensics.tracing.scores import (BASE_CONTEXT_FEATURES, BASE_COPY_FEATURES, CONTEXT_FEATURES, COPY_FEATURES,
                                        _others_extreme, copy_features, squeeze)
from advforensics.tracing.tracer import create_tracer


def _copies(classifier: torch.nn.Module, m: int = 4) -> CopySet:
    tracer = create_tracer("random", image_size=8, length_scale=1.0, seed=0)
    return CopySet(classifier, tracer, make_permutations(10, m), CopyParams(alpha=0.15, tau=2.0))


@pytest.fixture(scope="module")
def copies(zoo_classifier) -> CopySet:
    return _copies(zoo_classifier)


@pytest.fixture(scope="module")
def boundary_set(copies, digits_data):
    """Min-norm boundary points on copy 1 and copy 3 (fresh images), with their clean images."""
    images, labels = digits_data
    x0, y = images[1200:1260], labels[1200:1260]
    with torch.no_grad():
        right = copies.classifier(x0).argmax(1) == y
    x0, y = x0[right], y[right]
    half = len(x0) // 2
    parts = [min_norm_points(copies.copy(i), x0[s], y[s]) for i, s in ((1, slice(0, half)), (3, slice(half, None)))]
    x = torch.cat([p[0] for p in parts])
    ok = torch.cat([p[1] for p in parts])
    sources = torch.cat([torch.full((half,), 1), torch.full((len(x0) - half,), 3)])
    return x0[ok], x[ok], y[ok], sources[ok]


def test_min_norm_points_land_on_their_copy_boundary(copies, boundary_set) -> None:
    x0, x, y, sources = boundary_set
    assert len(x) >= 40
    labels = copies.labels(x)  # (B, m)
    fooled_own = labels[torch.arange(len(x)), sources] != y
    assert bool(fooled_own.all())
    # just past the boundary: pulled back 1% towards the clean image, the copy is right again on most
    back = copies.labels(along(x0, x, torch.full((len(x),), 0.99)))
    assert float((back[torch.arange(len(x)), sources] == y).float().mean()) > 0.9


@pytest.mark.parametrize("others", [1, None])
def test_transfer_seeking_reaches_its_goal_with_the_smallest_push(copies, boundary_set, others) -> None:
    x0, x, y, sources = boundary_set
    pushed, reached = transfer_seeking(copies, sources, x0, x, y, others=others, margin=1.0)
    assert float(reached.float().mean()) > 0.8
    need = copies.num_copies - 1 if others is None else others
    wrong = copies.labels(pushed) != y.unsqueeze(1)
    not_source = torch.ones_like(wrong)
    not_source[torch.arange(len(x)), sources] = False
    assert bool(((wrong & not_source).sum(1)[reached] >= need).all())
    # the push is the smallest: the same search, 2% short of it, does not reach the goal
    def fools(z: torch.Tensor) -> torch.Tensor:
        return ((copies.labels(z) != y.unsqueeze(1)) & not_source).sum(1) >= need

    push = smallest_push(fools, x0, x)
    assert torch.equal(torch.isfinite(push), reached)
    assert torch.allclose(along(x0, x, push[reached]), pushed[reached], atol=1e-6)
    moved = reached & (push > 1.0)  # the others already fooled as crafted need no push
    assert int(moved.sum()) >= 10
    assert float((~fools(along(x0, x, torch.nan_to_num(push, nan=1.0) * 0.98))[moved]).float().mean()) > 0.9


def _report(rows: list[tuple[int, float]], m: int = 4, names: list[int] | None = None) -> LearnedReport:
    """Examples naming alternative j with probability p; a copy named at p has false-alarm rate 1 - p."""
    probabilities = torch.zeros(len(rows), m + 1)
    for b, (j, p) in enumerate(rows):
        probabilities[b] = (1 - p) / m
        probabilities[b, j] = p
    return LearnedReport(probabilities=probabilities, false_alarm=1.0 - probabilities[:, :m],
                         rows=list(range(len(rows))) if names is None else names)


def test_pooling_is_a_geometric_mean_not_a_product() -> None:
    report = _report([(2, 0.9)] * 10)
    (group,) = report.groups()
    assert report.one_source and group.source == 2 and group.rows == list(range(10))
    assert abs(group.confidence - 0.9) < 1e-6  # ten examples at 0.9 stay at 0.9, not 1 - 1e-10
    none = _report([(4, 0.8)] * 6 + [(1, 0.5)] * 2)
    assert none.groups()[0].source is None  # "none of these copies" wins the pool


def test_mixed_evidence_is_split_into_sources() -> None:
    rows = [(0, 0.999)] * 5 + [(3, 0.999)] * 5
    report = _report(rows, names=list(range(10, 20)))
    assert not report.one_source
    groups = {g.source: g.rows for g in report.groups()}
    assert groups == {0: list(range(10, 15)), 3: list(range(15, 20))}
    # one stray confident example among a hundred is within the promised error rate: one source
    stray = _report([(0, 0.999)] * 99 + [(3, 0.999)])
    assert stray.one_source and stray.groups()[0].source == 0


@pytest.fixture(scope="module")
def fitted(copies, digits_data):
    images, labels = digits_data
    data = simulate(copies, images[:1100], labels[:1100], SimulationConfig(seed=0))
    return data, fit_learned_rule(data, FitConfig(epochs=40, seed=0))


def test_simulation_covers_every_model_behaviour_and_control(copies, fitted) -> None:
    data, _ = fitted
    assert data.features.shape[1:] == (copies.num_copies, len(COPY_FEATURES))
    assert data.context.shape[1] == len(CONTEXT_FEATURES)
    kinds = {k.split("/")[0] for k in data.kind}
    assert {f"copy{i}" for i in range(copies.num_copies)} | {"c-alone", "clean"} <= kinds
    behaviours = {k.split("/")[1] for k in data.kind}
    assert {"minimal", "overshoot", "transfer-1", "transfer-all", "clean"} <= behaviours
    assert set(data.target.tolist()) == set(range(copies.num_copies + 1))


def test_learned_rule_traces_fresh_boundary_points_and_rejects_clean_images(copies, fitted, boundary_set,
                                                                           digits_data) -> None:
    _, scorer = fitted
    _, x, _, sources = boundary_set
    features, context = copy_features(copies, x, copy_names=scorer.copy_names, context_names=scorer.context_names)
    with torch.no_grad():
        probs = scorer(features, context)
    assert torch.allclose(probs.sum(1), torch.ones(len(x)), atol=1e-5)
    assert float((probs.argmax(1) == sources).float().mean()) > 0.8
    images, _ = digits_data
    report = trace_learned(copies, scorer, images[1500:1600])
    named, _, accused = report.per_example()
    assert float((named == copies.num_copies).float().mean()) > 0.8 and int(accused.sum()) <= 2


def test_an_accusation_needs_both_keys() -> None:
    """The learned probability and a formula rule's null must both vouch for a copy."""
    from advforensics.tracing.calibration import Calibration
    from advforensics.tracing.reports import two_key_error

    probabilities = torch.tensor([[0.995, 0.001, 0.001, 0.003], [0.995, 0.001, 0.001, 0.003]])  # m = 3
    gen = torch.Generator().manual_seed(0)
    null_scores = torch.randn(300, 3, generator=gen)
    cal = Calibration.from_scores(null_scores, torch.zeros(300, dtype=torch.int64), rule="dol")
    scores = {"dol": torch.tensor([[9.0, 0.0, 0.0], [-9.0, 0.0, 0.0]])}  # row 0: dol agrees; row 1: it does not
    error = two_key_error(probabilities, scores, {"dol": cal})
    assert float(error[0, 0]) == pytest.approx(0.005, abs=1e-6)  # the learned key is the weaker one
    assert float(error[1, 0]) == 1.0  # the formula key refuses: no accusation, whatever the learned says
    assert torch.allclose(two_key_error(probabilities, {}, {}), 1.0 - probabilities[:, :3])


def test_a_near_tie_among_many_copies_is_not_an_accusation() -> None:
    """proximity's second key: two copies about as near their boundaries share the source's posterior,
    so the innocent one's tiny false-alarm rate alone does not accuse anyone."""
    from advforensics.tracing.calibration import Calibration
    from advforensics.tracing.reports import trace_scores

    m = 100
    gen = torch.Generator().manual_seed(0)
    null = -torch.rand(2000, m, generator=gen).pow(0.5)  # innocents spread over [-1, 0], sparse near 0
    null[:, 0] = -1e-4  # the calibration's sources sit on their boundary
    cal = Calibration.from_scores(null, torch.zeros(2000, dtype=torch.int64), rule="proximity")
    assert cal.reach() == pytest.approx(0.1 ** 0.5, abs=0.01)  # only 10% of innocent copies are nearer
    scores = -torch.rand(3, m, generator=gen).pow(0.5) * 0.5 - 0.5  # every copy far from its boundary
    scores[0, 7] = -1e-5  # one copy on its boundary, alone
    scores[1, 7], scores[1, 8] = -1e-5, -1.5e-5  # a near tie with another copy
    scores[2, 7] = -1e-5
    scores[2, 3] = -0.9 * cal.reach()  # another copy just within reach: a small share
    shares = cal.shares(scores)
    assert torch.allclose(shares.sum(1), torch.ones(3, dtype=torch.float64))
    assert float(shares[0, 7]) == 1.0 and float(shares[1, 7]) == pytest.approx(0.6)
    assert 0.99 < float(shares[2, 7]) < 1.0
    report = trace_scores(scores, "proximity", cal)
    bound = 1 - (m - 1) * report.false_alarm  # the false-alarm key alone
    assert bool((bound >= 0.99).all()) and report.predicted.tolist() == [7, 7, 7]
    assert [e.accused for e in report.examples()] == [True, False, True]
    assert float(report.example_confidence[1]) == pytest.approx(0.6, abs=1e-6)
    # pooled: the mean share, never sharpened by multiplying examples
    assert float(report.aggregate_confidence[7]) == pytest.approx(float(shares[:, 7].mean()), abs=1e-6)
    none = -torch.full((1, m), 0.9)  # no copy within reach: no copy is named with any confidence
    assert float(trace_scores(none, "proximity", cal).example_confidence[0]) == 0.0
    with pytest.raises(InputValidationError):
        Calibration.from_scores(null, torch.zeros(2000, dtype=torch.int64), rule="dol").shares(scores)


def test_learned_rule_round_trips_as_json_and_refuses_other_features(fitted, copies, boundary_set) -> None:
    _, scorer = fitted
    payload = json.loads(json.dumps(scorer_to_dict(scorer)))
    again = scorer_from_dict(payload)
    features, context = copy_features(copies, boundary_set[1], copy_names=scorer.copy_names,
                                      context_names=scorer.context_names)
    with torch.no_grad():
        assert torch.allclose(again(features, context), scorer(features, context), atol=1e-6)
    payload["copy_features"] = payload["copy_features"][:-1]
    with pytest.raises(CheckpointError, match="other features"):
        scorer_from_dict(payload)


def test_others_extreme_is_the_extreme_over_the_other_copies() -> None:
    gen = torch.Generator().manual_seed(0)
    for m in (1, 2, 5, 30):
        values = torch.randn(50, m, generator=gen)
        values[:5, : min(2, m)] = 1.0  # ties
        for largest in (True, False):
            expected = torch.empty(50, m)
            for i in range(m):
                others = torch.cat([values[:, :i], values[:, i + 1:]], 1)
                fill = float("-inf") if largest else float("inf")
                expected[:, i] = (others.amax(1) if largest else others.amin(1)) if others.shape[1] else fill
            assert torch.equal(_others_extreme(values, largest), expected)


def test_squeezed_label_names_the_clean_class_of_an_example_that_fools_c(copies, boundary_set) -> None:
    """Pushed on along its perturbation until C itself is fooled, the example keeps its clean class under
    the squeeze more often than C's label does, and the "sq_" features take the class pair from it."""
    x0, x, y, sources = boundary_set
    assert torch.equal(squeeze(torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0])), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    pushed = along(x0, x, torch.full((len(x),), 1.3))
    with torch.no_grad():
        fooled_c = copies.classifier(pushed).argmax(1) != y
        squeezed = copies.classifier(squeeze(pushed)).argmax(1)
    assert float((squeezed == y).float().mean()) > float((~fooled_c).float().mean())
    features, context = copy_features(copies, pushed)
    assert features.shape == (len(x), copies.num_copies, len(COPY_FEATURES))
    assert context.shape == (len(x), len(CONTEXT_FEATURES)) and torch.isfinite(features).all()
    # a subset in another order is the same columns
    sub, ctx = copy_features(copies, pushed, copy_names=("sq_dir", "log_gap"), context_names=("sq_agrees",))
    assert torch.equal(sub[:, :, 0], features[:, :, COPY_FEATURES.index("sq_dir")])
    assert torch.equal(sub[:, :, 1], features[:, :, COPY_FEATURES.index("log_gap")])
    assert torch.equal(ctx[:, 0], context[:, CONTEXT_FEATURES.index("sq_agrees")])
    with pytest.raises(InputValidationError, match="unknown tracing features"):
        copy_features(copies, pushed, copy_names=("no_such",))


def test_the_feature_set_is_stored_with_the_rule_and_read_back(copies, fitted, boundary_set) -> None:
    """The default rule reads the base features (the one shared pass, as records made before the choice
    existed); a "squeezed" rule reads every feature. Each round-trips and traces with its own set."""
    data, base = fitted
    assert base.copy_names == BASE_COPY_FEATURES and base.context_names == BASE_CONTEXT_FEATURES
    squeezed = fit_learned_rule(data, FitConfig(epochs=5, seed=0, features="squeezed"))
    assert squeezed.copy_names == COPY_FEATURES and squeezed.context_names == CONTEXT_FEATURES
    x = boundary_set[1]
    for scorer, (names, context_names) in ((base, (BASE_COPY_FEATURES, BASE_CONTEXT_FEATURES)),
                                           (squeezed, (COPY_FEATURES, CONTEXT_FEATURES))):
        payload = json.loads(json.dumps(scorer_to_dict(scorer)))
        assert payload["copy_features"] == list(names)
        again = scorer_from_dict(payload)
        report = trace_learned(copies, again, x)
        features, context = copy_features(copies, x, copy_names=names, context_names=context_names)
        with torch.no_grad():
            assert torch.allclose(report.probabilities, scorer(features, context), atol=1e-6)
    with pytest.raises(InputValidationError, match="features must be one of"):
        FitConfig(features="everything")


def test_cli_separate_fits_the_learned_rule_and_identify_uses_it(tmp_path: Path, zoo_classifier,
                                                                digits_data) -> None:
    from advforensics.models import save_model

    images, labels = digits_data
    save_model(zoo_classifier, tmp_path / "c", card={"data": "digits"})
    runner = CliRunner()
    out = tmp_path / "copies"
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "4",
                                 "--length-scale", "1.0", "--calibrate-data", "digits", "--calibration-size", "60",
                                 "--fit-size", "1000", "--no-onnx", "--out", str(out), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "default rule: learned" in result.output
    record, copies = load_copies(out)
    assert record.default_rule == "learned" and read_record(out).learned["info"]["examples"] > 500
    x0, y = images[1300:1340], labels[1300:1340]
    points, ok = min_norm_points(copies.copy(2), x0, y)
    np.savez(tmp_path / "advs.npz", adv_examples=points[ok].permute(0, 2, 3, 1).numpy())  # another library's NHWC
    result = runner.invoke(cli, ["trace", "identify", "--record", str(out), "--examples", str(tmp_path / "advs.npz"),
                                 "--json", str(tmp_path / "id.json")])
    assert result.exit_code == 0, result.output
    assert "NHWC" in result.output and "pooled: copy 2" in result.output
    payload = json.loads((tmp_path / "id.json").read_text())
    assert payload["rule"] == "learned" and payload["groups"][0]["source"] == 2
    assert [r["row"] for r in payload["per_example"]] == list(range(int(ok.sum())))
    # clean images: nobody is accused
    np.savez(tmp_path / "clean.npz", x=images[1500:1560].numpy())
    result = runner.invoke(cli, ["trace", "identify", "--record", str(out), "--examples", str(tmp_path / "clean.npz"),
                                 "--json", str(tmp_path / "clean.json")])
    assert result.exit_code == 0, result.output
    clean = json.loads((tmp_path / "clean.json").read_text())
    assert clean["groups"][0]["source"] is None and sum(clean["accusations"]) <= 1
    # a learned rule edited in the record is refused when loaded (the record hash covers it)
    edited = tmp_path / "edited"
    import shutil

    shutil.copytree(out, edited)
    payload = json.loads((edited / "record.json").read_text())
    payload["learned"]["state"]["temperature"] = 0.01
    (edited / "record.json").write_text(json.dumps(payload))
    result = runner.invoke(cli, ["trace", "identify", "--record", str(edited), "--examples", str(tmp_path / "advs.npz")])
    assert result.exit_code == 2 and "record hash" in result.output
    # the paper's rule stays available beside it
    result = runner.invoke(cli, ["trace", "identify", "--record", str(out), "--examples", str(tmp_path / "advs.npz"),
                                 "--rule", "dol"])
    assert result.exit_code == 0 and "rule dol" in result.output
