"""The attack-family model: what it reads from a log is what the seller's simulation records, its file
is verified when loaded, and it names attacks it was not fitted on (held-out seeds and images)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from advforensics.attacks import create_attack
from advforensics.data import load_dataset
from advforensics.errors import CheckpointError
from advforensics.serving.client import RemoteCopy
from advforensics.serving.families import FamilyModel, QueryRecorder, QuerySequence, UNKNOWN, sequence_features
from advforensics.serving.local import LocalServer
from advforensics.serving.querylog import QueryLog
from advforensics.serving.simulate import simulate_families
from advforensics.tracing.record import load_copies


def test_the_log_holds_the_sequence_the_simulation_records(served, tmp_path):
    """A recorder around the HTTP client sees exactly the requests the server logs: same sketches,
    labels and request sizes, so features fitted on simulations read real logs the same way."""
    log = tmp_path / "queries.sqlite"
    test = load_dataset("digits", split="test")
    with LocalServer(served.record, served.keys, log, "--rate-limit", "1000000/second") as server:
        remote = RemoteCopy(server.url, served.alice)
        recorder = QueryRecorder(remote, tuple(test.images.shape[1:]))
        x, y = test.images[:1], test.labels[:1]
        recorder(x)
        create_attack("boundary", max_iter=10, seed=0)(recorder, x, y)
        remote.close()
    recorded = recorder.sequence()
    logged = QuerySequence.from_log(QueryLog(log, create=False).read().of("alice"))
    assert len(logged.labels) == len(recorded.labels) > 50
    np.testing.assert_array_equal(logged.labels, recorded.labels)
    np.testing.assert_array_equal(logged.request_sizes, recorded.request_sizes)
    assert np.abs(logged.sketches.astype(int) - recorded.sketches.astype(int)).max() <= 1
    np.testing.assert_allclose(sequence_features(logged), sequence_features(recorded), atol=0.05)


def test_the_family_file_round_trips_and_refuses_edits(families_file, tmp_path):
    model = FamilyModel.load(families_file)
    assert set(model.families) == {"benign", "boundary", "hopskipjump", "qeba", "signopt", "surfree"}
    rng = np.random.default_rng(0)
    sequence = QuerySequence(rng.integers(0, 256, (40, 16, 16), dtype=np.uint8), rng.integers(0, 10, 40),
                             np.full(4, 10))
    family, probability = model.predict(sequence)
    assert family in model.families + [UNKNOWN] and 0 < probability <= 1
    payload = json.loads(families_file.read_text())
    payload["coef"][0][0] += 1.0
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="fails its hash"):
        FamilyModel.load(edited)
    keys_like = tmp_path / "other.json"
    keys_like.write_text(json.dumps({"format": "advforensics-buyer-keys/1", "buyers": []}))
    with pytest.raises(CheckpointError, match="not an advforensics query-family model"):
        FamilyModel.load(keys_like)


def test_an_unsure_model_says_unknown(families_file):
    model = FamilyModel.load(families_file)
    rng = np.random.default_rng(1)
    sequence = QuerySequence(rng.integers(0, 256, (60, 16, 16), dtype=np.uint8), rng.integers(0, 10, 60),
                             np.full(6, 10))
    _, probability = model.predict(sequence)
    strict = dataclasses.replace(model, min_confidence=min(1.0, probability + 1e-6))
    assert strict.predict(sequence)[0] == UNKNOWN


def test_a_sequence_unlike_any_fitted_one_is_unknown_however_confident(families_file):
    model = FamilyModel.load(families_file)
    inside = model.mean + model.scale * model.centres  # each family's centre, in raw features
    assert [name for name, _ in model.name(inside)] == model.families
    direction = model.coef[0] / np.linalg.norm(model.coef[0])  # far out where the softmax is surest of family 0
    far = model.mean + model.scale * (model.centres[0] + 10 * model.radii[0] * direction)
    (name, probability), = model.name(far)
    assert probability > 0.99 and name == UNKNOWN


@pytest.mark.slow
def test_held_out_attacks_are_named(served):
    """Fitted on train images and seed 0; measured on test images and seed 1 (4 per family)."""
    _, copies = load_copies(served.record, warn=False)
    model_of_copy = copies.copy(1)
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    fit_x, fit_names = simulate_families(model_of_copy, train.images, train.labels, 8, seed=0)
    from advforensics.serving.families import fit_families

    model = fit_families(fit_x, fit_names)
    test_x, test_names = simulate_families(model_of_copy, test.images, test.labels, 4, seed=1)
    named = [name for name, _ in model.name(test_x)]
    accuracy = np.mean([a == b for a, b in zip(named, test_names)])
    assert accuracy >= 0.8, list(zip(test_names, named))
