"""Tracing: copies, one-pass scoring, DOL, seller record, ONNX export, CLI round trip, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.tracing.copies import CopyParams, CopySet, ModelCopy
from advforensics.tracing.calibration import Calibration, calibrate
from advforensics.tracing.reports import trace
from advforensics.tracing.names import FORMULA_RULES
from advforensics.tracing.scores import copy_scores, dol_from_scores, dol_scores
from advforensics.tracing.permutations import make_permutations
from advforensics.tracing.record import (
    copyset_from_copies,
    identify_onnx,
    load_copies,
    read_record,
    separate,
)
from advforensics.tracing.serving import onnx_labels
from advforensics.tracing.tracer import create_tracer, load_tracer, save_tracer


def _copies(classifier: torch.nn.Module, m: int = 5, seed: int = 0, alpha: float = 0.15) -> CopySet:
    tracer = create_tracer("random", image_size=8, length_scale=1.0, seed=seed)
    return CopySet(classifier, tracer, make_permutations(10, m), CopyParams(alpha=alpha, tau=2.0))


def test_one_pass_scoring_equals_per_copy_forward(tiny_classifier, digits_data) -> None:
    images, _ = digits_data
    copies = _copies(tiny_classifier, m=7)
    x = images[:50]
    scores, traced = copies.scores(x)  # (B, m, K)
    t0 = copies.tracer(x)
    for i in range(copies.num_copies):
        naive = copies.copy(i)(x)  # one forward pass per copy
        assert torch.allclose(scores[:, i], naive, atol=1e-6)
        perm = copies.permutations[i]
        # T_i(x)[perm[j]] = T_0(x)[j]
        assert torch.allclose(traced[:, i][:, perm], t0, atol=1e-7)
        top2 = naive.topk(2, dim=1).indices
        t_i = naive.new_zeros(naive.shape)
        t_i[:, perm] = t0
        naive_dol = t_i.gather(1, top2[:, :1]).squeeze(1) - t_i.gather(1, top2[:, 1:]).squeeze(1)
        assert torch.allclose(dol_scores(copies, x)[:, i], naive_dol, atol=1e-6)


def test_copy_labels_mostly_match_the_classifier(tiny_classifier, digits_data) -> None:
    images, labels = digits_data
    copies = _copies(tiny_classifier, alpha=0.05)
    base = tiny_classifier(images).argmax(1)
    agree = (copies.labels(images) == base.unsqueeze(1)).float().mean()
    assert agree > 0.97


def test_dol_picks_the_source_on_a_constructed_example() -> None:
    # scores and tracer outputs for 3 copies, K = 4: copy 1's tracer put class 2 above class 0
    traced = torch.tensor([[[0.1, 0.0, -0.2, 0.3], [-0.5, 0.1, 0.6, 0.0], [0.4, 0.2, -0.1, -0.3]]])
    probs = torch.tensor([0.45, 0.05, 0.40, 0.10])
    scores = probs + 0.15 * traced  # (1, 3, 4)
    dol = dol_from_scores(scores, traced)
    assert dol.shape == (1, 3)
    assert int(dol.argmax()) == 1
    assert torch.isclose(dol[0, 1], torch.tensor(0.6 - (-0.5)))


def test_minimal_boundary_points_are_traced_to_their_copy(tiny_classifier, digits_data) -> None:
    """DeepFool points just past one copy's boundary (a minimal-distance attack) carry its mark."""
    from advforensics.tracing.calibration import deepfool_points

    images, _ = digits_data
    copies = _copies(tiny_classifier, m=5)
    hits, total = dict.fromkeys(FORMULA_RULES, 0), 0
    for i in range(copies.num_copies):
        points, valid = deepfool_points(copies.copy(i), images[:60])
        assert valid.float().mean() > 0.9
        assert (copies.labels(points[valid])[:, i] != tiny_classifier(images[:60][valid]).argmax(1)).all()
        for rule in FORMULA_RULES:
            hits[rule] += int((copy_scores(copies, points[valid], rule).argmax(1) == i).sum())
        total += int(valid.sum())
    for rule in FORMULA_RULES:
        assert hits[rule] / total > 0.28, rule  # chance is 0.2 (binomial sd ~0.023 at 300 points)
    assert hits["proximity"] / total > 0.9  # the points end on their copy's boundary
    cal = calibrate(copies, images[:60], seed=0)
    report = trace(copies, images[:10], cal)
    assert report.false_alarm is not None and ((report.false_alarm > 0) & (report.false_alarm <= 1)).all()
    # clean images sit on no copy's boundary: their top scores are ordinary innocent scores
    assert float(report.false_alarm.median()) > 0.05
    # the control null: every copy's score on C's own boundary points; an example made on C alone
    # gets a rate at least m / (m - 1) times its tail in that null
    c_points, c_valid = deepfool_points(tiny_classifier, images[:60])
    assert cal.control_sorted is not None and len(cal.control_sorted) == 5 * int(c_valid.sum())
    on_c = copy_scores(copies, c_points[c_valid][:20], cal.rule)
    control = torch.tensor(cal.control_sorted, dtype=torch.float64)
    tail = ((control[None, None, :] >= on_c.double()[..., None]).sum(-1) + 1).double() / (len(control) + 1)
    assert (cal.false_alarm_rate(on_c) >= (tail * 5 / 4).clamp(max=1) - 1e-6).all()
    without = Calibration.from_dict({k: v for k, v in cal.to_dict().items() if k != "control_sorted"})
    assert (cal.false_alarm_rate(on_c) >= without.false_alarm_rate(on_c)).all()
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).control_sorted == cal.control_sorted


def test_calibration_roundtrip_and_aggregation() -> None:
    gen = torch.Generator().manual_seed(0)
    dol = torch.randn(200, 4, generator=gen) * 0.2
    sources = torch.arange(200) % 4
    dol[torch.arange(200), sources] += 0.6
    cal = Calibration.from_scores(dol, sources, rule="dol", bins=20)
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert torch.equal(again.false_alarm_rate(dol), cal.false_alarm_rate(dol))
    from advforensics.tracing.reports import trace_scores

    report = trace_scores(dol[sources == 2][:5], "dol", cal)
    assert report.aggregate_source == 2
    payload = report.to_dict()
    # pooled, the confidence is never more than the surest example's: e times the geometric mean of
    # the p-values (a valid p-value under any dependence), times the m - 1 innocent copies
    per_example = [row["confidence"] for row in payload["per_example"]]
    assert payload["aggregate"]["confidence"] <= max(per_example) + 1e-6
    pooled_rate = float(cal.false_alarm_rate(dol[sources == 2][:5])[:, 2].log().mean().exp())
    assert payload["aggregate"]["confidence"] == pytest.approx(1 - 3 * math.e * pooled_rate, abs=1e-5)
    assert payload["aggregate"]["confidence"] > 0.9  # (the null's 600 scores cap it at 1 - 3e/601)
    # innocent copies' pooled false-alarm rates stay ordinary, the source's is small
    assert payload["aggregate"]["false_alarm_rate"][2] < 1e-2
    assert min(v for i, v in enumerate(payload["aggregate"]["false_alarm_rate"]) if i != 2) > 5e-2
    # under the null (scores drawn like innocent ones) the pooled rate is conservative: a geometric
    # mean of p-values falls below 0.1 less often than one p-value does, never more
    null = torch.randn(400, 5, 4, generator=gen) * 0.2
    p_null = torch.stack([cal.combined_false_alarm_rate(block) for block in null.unbind(0)])
    assert float((p_null < 0.1).float().mean()) < 0.1
    # ten examples at the same rate pool to that rate, not to its tenth power
    same = torch.full((10, 4), float(dol[0, 0]))
    assert torch.allclose(cal.combined_false_alarm_rate(same), cal.false_alarm_rate(same[:1])[0])
    with pytest.raises(InputValidationError, match="measured for rule"):
        trace_scores(dol[:5], "margin", cal)
    with pytest.raises(InputValidationError, match="unknown fields"):
        Calibration.from_dict({**cal.to_dict(), "pickle": "x"})
    with pytest.raises(InputValidationError, match="unknown score rule"):
        Calibration.from_dict({**cal.to_dict(), "rule": "nope"})
    # a record written before score rules (no rule, no edges) reads as DOL on uniform bins
    old = {k: v for k, v in cal.to_dict().items() if k not in ("rule", "edges")}
    old.update(bins=20, source_counts=[1] * 20, innocent_counts=[1] * 20)
    assert Calibration.from_dict(old).rule == "dol"


def test_margin_and_proximity_rules_on_a_constructed_example() -> None:
    from advforensics.tracing.scores import margin_from_scores, proximity_from_scores

    # C prefers class 0 over class 2; copy 1's tracer lifted class 2 exactly onto the boundary
    probs = torch.tensor([[0.46, 0.04, 0.40, 0.10]])
    traced = torch.tensor([[[0.1, 0.0, -0.2, 0.3], [-0.2, 0.1, 0.2, 0.0], [0.4, 0.2, -0.1, -0.3]]])
    scores = probs.unsqueeze(1) + 0.15 * traced
    margin = margin_from_scores(scores, probs)
    assert torch.allclose(margin[0], torch.tensor([-0.105, 0.0, -0.135]), atol=1e-6)
    proximity = proximity_from_scores(scores)
    assert int(proximity.argmax()) == 1 and abs(float(proximity[0, 1])) < 1e-6
    assert (proximity <= 0).all()


def test_tracer_save_load_and_tamper(tmp_path: Path) -> None:
    tracer = create_tracer("random", image_size=8, seed=3)
    digest = save_tracer(tracer, tmp_path / "t.safetensors")
    again = load_tracer(tmp_path / "t.safetensors", expected_hash=digest)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(again(x), tracer(x))
    assert create_tracer("random", image_size=8, seed=3).content_hash() == digest  # deterministic from seed
    with pytest.raises(CheckpointError):
        load_tracer(tmp_path / "t.safetensors", expected_hash="0" * 64)
    blob = bytearray((tmp_path / "t.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        load_tracer(tmp_path / "bad.safetensors")


def test_vae_tracer_shapes_and_range() -> None:
    tracer = create_tracer("vae", image_size=(28, 28), width=8)
    x = torch.rand(3, 1, 28, 28)
    out = tracer(x)
    assert out.shape == (3, 10) and out.abs().max() <= 1
    x_hat, mu, logvar = tracer.reconstruct(x)
    assert x_hat.shape == x.shape and mu.shape == (3, 5) and logvar.shape == (3, 5)
    with pytest.raises(InputValidationError):
        create_tracer("vae", num_outputs=9)


@pytest.mark.parametrize("trap", ["literal-squared", "literal-signed", "pairwise"])
def test_vae_training_runs_and_moves_the_trap_angle(trap: str, digits_data) -> None:
    from advforensics.tracing.training import TraceTrainConfig, train_vae_tracer

    images, _ = digits_data
    tracer = create_tracer("vae", image_size=8, width=8, seed=0)
    result = train_vae_tracer(tracer, images[:512], TraceTrainConfig(epochs=3, batch_size=64, lr=3e-3,
                                                                     trap=trap), progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["trap"] < first["trap"]
    assert all(np.isfinite(h["loss"]) for h in result.history)


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory, zoo_classifier, digits_data) -> Path:
    images, _ = digits_data
    out = tmp_path_factory.mktemp("record") / "copies"
    copies = _copies(zoo_classifier, m=3)
    cal = calibrate(copies, images[:100], seed=0)
    separate(zoo_classifier, copies.tracer, copies.permutations, copies.params, out, calibration=cal,
             probe=images[:64])
    return out


def test_onnx_copies_agree_with_pytorch(record_dir: Path, digits_data) -> None:
    images, _ = digits_data
    record, copies = load_copies(record_dir)
    for entry in record.copies:
        onnx_path = record_dir / entry.onnx_file
        assert identify_onnx(record, onnx_path) == entry.index
        assert torch.equal(onnx_labels(onnx_path, images[:300]), copies.copy(entry.index)(images[:300]).argmax(1))


def test_record_tamper_detection(record_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(record_dir, bad)
    payload = json.loads((bad / "record.json").read_text())
    payload["copies"][0]["permutation"] = payload["copies"][1]["permutation"]
    (bad / "record.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="record hash"):
        read_record(bad)
    # a swapped tracer file fails its hash
    shutil.copytree(record_dir, tmp_path / "bad2")
    save_tracer(create_tracer("random", image_size=8, seed=99), tmp_path / "bad2" / "tracer.safetensors")
    with pytest.raises(CheckpointError):
        load_copies(tmp_path / "bad2")
    with pytest.raises(CheckpointError):
        read_record(tmp_path / "nowhere")


def test_onnx_copy_outputs_the_label_alone(record_dir: Path, digits_data) -> None:
    """The graph a buyer's endpoint runs has one output, an int64 label per row: no score leaves it."""
    import onnx
    import onnxruntime as ort

    record, copies = load_copies(record_dir)
    path = record_dir / record.copies[1].onnx_file
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["label"]
    tensor_type = graph.output[0].type.tensor_type
    assert tensor_type.elem_type == onnx.TensorProto.INT64
    assert len(tensor_type.shape.dim) == 1  # (B,), not (B, K)
    images, _ = digits_data
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": images[:50].numpy()})
    assert out.shape == (50,) and out.dtype.kind == "i"
    assert np.array_equal(out, copies.copy(1)(images[:50]).argmax(1).numpy())


def test_foreign_onnx_and_mixed_base_models_fail(record_dir: Path, tmp_path: Path, tiny_classifier,
                                                 zoo_classifier) -> None:
    record = read_record(record_dir)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes((record_dir / "copy_0.onnx").read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="not one of"):
        identify_onnx(record, foreign)
    a = _copies(zoo_classifier, m=2).copy(0)
    b = _copies(tiny_classifier, m=2).copy(1)
    with pytest.raises(InputValidationError, match="different base"):
        copyset_from_copies([a, b])
    c = _copies(zoo_classifier, m=2, seed=5).copy(1)
    with pytest.raises(InputValidationError, match="different tracer"):
        copyset_from_copies([a, c])
    same = copyset_from_copies([_copies(zoo_classifier, m=3).copy(i) for i in range(3)])
    assert torch.equal(same.permutations, make_permutations(10, 3))


def test_bad_inputs_raise(tiny_classifier) -> None:
    copies = _copies(tiny_classifier)
    for bad in (torch.rand(2, 1, 9, 9), torch.rand(2, 8, 8), torch.rand(2, 1, 8, 8) * 2,
                torch.full((2, 1, 8, 8), float("nan"))):
        with pytest.raises(InputValidationError):
            dol_scores(copies, bad)
    with pytest.raises(InputValidationError, match="unknown score rule"):
        copy_scores(copies, torch.rand(2, 1, 8, 8), "nope")
    with pytest.raises(InputValidationError):
        CopySet(tiny_classifier, copies.tracer, torch.tensor([[0, 1, 2], [0, 1, 2]]), CopyParams())
    with pytest.raises(InputValidationError):
        CopyParams(alpha=0.0).validate()
    with pytest.raises(InputValidationError):
        ModelCopy(tiny_classifier, copies.tracer, torch.arange(5), CopyParams())


def test_cli_separate_and_identify_round_trip(tmp_path: Path, zoo_classifier, digits_data) -> None:
    from advforensics.models import save_model

    images, labels = digits_data
    save_model(zoo_classifier, tmp_path / "c", card={"data": "digits"})
    runner = CliRunner()
    out = tmp_path / "copies"
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "3",
                                 "--alpha", "0.15", "--length-scale", "1.0", "--calibrate-data", "digits",
                                 "--calibration-size", "100", "--fit-size", "0", "--out", str(out), "--seed", "0",
                                 "--json", str(tmp_path / "sep.json")])
    assert result.exit_code == 0, result.output
    assert (out / "copy_2.onnx").is_file() and json.loads((tmp_path / "sep.json").read_text())["calibrated"]
    # examples: minimal-distance boundary points on copy 1 (a boundary-ending attack on that copy)
    from advforensics.tracing.calibration import deepfool_points

    _, copies = load_copies(out)
    points, valid = deepfool_points(copies.copy(1), images[200:240])
    np.savez(tmp_path / "advs.npz", x_adv=points[valid].numpy())
    result = runner.invoke(cli, ["trace", "identify", "--record", str(out), "--examples",
                                 str(tmp_path / "advs.npz"), "--json", str(tmp_path / "id.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "id.json").read_text())
    assert payload["aggregate"]["source"] == 1 and payload["rule"] == "proximity"  # no learned rule fitted
    # every rule was calibrated: the paper's rule also reports a confidence
    result = runner.invoke(cli, ["trace", "identify", "--record", str(out), "--examples", str(tmp_path / "advs.npz"),
                                 "--rule", "dol", "--json", str(tmp_path / "id-dol.json")])
    assert result.exit_code == 0, result.output
    dol_payload = json.loads((tmp_path / "id-dol.json").read_text())
    assert dol_payload["rule"] == "dol" and "confidence" in dol_payload["aggregate"]
    assert set(read_record(out).other_calibrations) == {"dol", "margin"}
    assert "confidence" in payload["aggregate"] and "confidence" in payload["per_example"][0]
    # bad examples file: out of range -> one clear error line, exit 2
    np.savez(tmp_path / "bad.npz", x_adv=(points * 3).numpy())
    result = runner.invoke(cli, ["trace", "identify", "--record", str(out), "--examples", str(tmp_path / "bad.npz")])
    assert result.exit_code == 2 and "outside [0, 1]" in result.output
    # writing into an existing record directory is refused
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--out", str(out),
                                 "--no-onnx"])
    assert result.exit_code == 2 and "already holds" in result.output


def test_cli_attack_a_copy_then_identify_it(record_dir: Path, tmp_path: Path) -> None:
    """The buyer's workflow: a hard-label attack on copy 2 via `attacks run --copies`, then tracing."""
    runner = CliRunner()
    advs = tmp_path / "advs.npz"
    result = runner.invoke(cli, ["attacks", "run", "--attack", "hopskipjump", "--copies", str(record_dir),
                                 "--copy", "2", "--data", "digits", "--n", "6", "--param", "max_iter=5",
                                 "--param", "max_eval=200", "--param", "init_size=50", "--seed", "0",
                                 "--out", str(advs), "--json", str(tmp_path / "run.json")])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["copy"] == 2 and run["success_rate"] > 0.5
    assert "classifier_fooled_rate_success" in run and "C alone fooled" in result.output
    with np.load(advs, allow_pickle=False) as data:
        n_success = int(data["success"].sum())
        assert data["extra_classifier_fooled"].shape == data["success"].shape
    result = runner.invoke(cli, ["trace", "identify", "--record", str(record_dir), "--examples", str(advs),
                                 "--json", str(tmp_path / "id.json")])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "id.json").read_text())
    assert payload["num_examples"] == n_success  # failed attempts are not traced
    assert payload["aggregate"]["source"] == 2


def test_cli_attack_target_must_be_one_model_or_one_copy(record_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["attacks", "run", "--attack", "fgsm", "--copies", str(record_dir),
                                 "--data", "digits"])
    assert result.exit_code == 2 and "--copy INDEX" in result.output
    result = runner.invoke(cli, ["attacks", "run", "--attack", "fgsm", "--copies", str(record_dir),
                                 "--copy", "7", "--data", "digits"])
    assert result.exit_code == 2 and "out of range" in result.output
    result = runner.invoke(cli, ["attacks", "run", "--attack", "fgsm", "--data", "digits"])
    assert result.exit_code == 2 and "exactly one of --weights" in result.output


def test_wilson_interval_matches_the_textbook_value() -> None:
    from advforensics.utils import wilson_interval

    low, high = wilson_interval(8, 10)
    assert abs(low - 0.4902) < 1e-3 and abs(high - 0.9433) < 1e-3
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] > 0.999
