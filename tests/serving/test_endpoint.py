"""The endpoint in process (Starlette's TestClient): labels only, each buyer their copy, keys, limits,
refusals, and a log row for every image answered."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from starlette.testclient import TestClient

from advforensics.errors import DataFileError, InputValidationError
from advforensics.serving.app import Endpoint, ServeConfig, create_app
from advforensics.serving.querylog import QueryLog
from advforensics.tracing.record import read_record
from advforensics.tracing.serving import onnx_labels

from serving_helpers import run_ok


def _client(served, tmp_path: Path, **config) -> tuple[TestClient, Endpoint, Path]:
    keys = tmp_path / "keys.json"
    shutil.copy(served.keys, keys)
    endpoint = Endpoint(served.record, keys, QueryLog(tmp_path / "log.sqlite"), ServeConfig(**config))
    return TestClient(create_app(endpoint)), endpoint, keys


def _post(client: TestClient, key: str | None, images) -> object:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = images if isinstance(images, bytes) else orjson.dumps({"images": images}, option=orjson.OPT_SERIALIZE_NUMPY)
    return client.post("/v1/labels", content=body, headers=headers)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def test_each_buyer_gets_the_labels_of_their_copy_and_nothing_else(served, tmp_path):
    images = _images(200)
    record = read_record(served.record, warn=False)
    expected = {i: onnx_labels(served.record / c.onnx_file, torch.from_numpy(images)).numpy()
                for i, c in enumerate(record.copies)}
    assert (expected[1] != expected[2]).any()  # the copies differ, so the test below can tell them apart
    client, _, _ = _client(served, tmp_path)
    with client:
        for key, copy_index in ((served.alice, 1), (served.bob, 2)):
            response = _post(client, key, images)
            assert response.status_code == 200
            assert set(response.json()) == {"labels"}  # no score, no copy index
            assert response.json()["labels"] == expected[copy_index].tolist()
            assert all(isinstance(v, int) for v in response.json()["labels"])
        single = _post(client, served.alice, images[0])  # (C, H, W): one image
        assert single.json() == {"labels": [int(expected[1][0])]}


def test_every_answered_image_is_in_the_log(served, tmp_path):
    client, endpoint, _ = _client(served, tmp_path, log_images=True)
    images = _images(37, seed=1)
    with client:
        answers = [_post(client, served.alice, images[:30]), _post(client, served.bob, images[30:])]
    logged = QueryLog(tmp_path / "log.sqlite", create=False).read()
    assert len(logged) == 37
    assert logged.buyers.tolist() == ["alice"] * 30 + ["bob"] * 7
    assert logged.copy_indices.tolist() == [1] * 30 + [2] * 7
    assert logged.labels.tolist() == answers[0].json()["labels"] + answers[1].json()["labels"]
    assert set(logged.request_ids.tolist()) == {a.headers["x-request-id"] for a in answers}
    stored = QueryLog(tmp_path / "log.sqlite", create=False).images(logged.ids.tolist())
    assert np.array_equal(np.stack([stored[i] for i in logged.ids]), images)
    assert len(set(logged.content_sha256.tolist())) == 37
    assert logged.sketches.shape == (37, 16, 16)


@pytest.mark.parametrize("key", [None, "afk_not-a-key", "wrong"])
def test_unknown_key_gets_401(served, tmp_path, key):
    client, _, _ = _client(served, tmp_path)
    with client:
        response = _post(client, key, _images(1))
    assert response.status_code == 401 and "API key" in response.json()["error"]
    assert QueryLog(tmp_path / "log.sqlite", create=False).count() == 0  # refused queries are not answered


def test_a_revoked_key_gets_401_without_a_restart(served, tmp_path):
    client, _, keys = _client(served, tmp_path)
    with client:
        assert _post(client, served.alice, _images(1)).status_code == 200
        run_ok(["buyers", "revoke", "--keys", str(keys), "--buyer", "alice"])
        assert _post(client, served.alice, _images(1)).status_code == 401
        assert _post(client, served.bob, _images(1)).status_code == 200
    assert "revoked" in run_ok(["buyers", "list", "--keys", str(keys)]).splitlines()[0]


@pytest.mark.parametrize("body, status, words", [
    (b"not json", 400, "not JSON"),
    (b'{"pictures": []}', 400, '{"images"'),
    (b'{"images": [[1, 2], [3]]}', 400, "rectangular"),
    (orjson.dumps({"images": np.zeros((2, 1, 28, 28)).tolist()}), 422, "(B, 1, 8, 8)"),
    (orjson.dumps({"images": np.zeros((2, 8, 8, 1)).tolist()}), 422, "NCHW"),
    (orjson.dumps({"images": np.full((1, 1, 8, 8), 2.0).tolist()}), 422, "[0, 1]"),
    (b'{"images": [[[' + b",".join([b"[" + b",".join([b"NaN"] * 8) + b"]"] * 8)[:-1] + b"]]]]}", 400, "not JSON"),
    (orjson.dumps({"images": np.zeros((0, 1, 8, 8)).tolist()}), 422, "1 to"),
    (orjson.dumps({"images": np.zeros((9, 1, 8, 8)).tolist()}), 413, "1 to 8"),
])
def test_bad_requests_get_one_clear_4xx(served, tmp_path, body, status, words):
    client, _, _ = _client(served, tmp_path, max_batch=8)
    with client:
        response = _post(client, served.alice, body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_nan_and_oversized_bodies_are_refused(served, tmp_path):
    client, endpoint, _ = _client(served, tmp_path, max_batch=2)
    images = _images(1)
    images[0, 0, 3, 3] = np.nan  # orjson writes it as null
    with client:
        assert _post(client, served.alice, images).json()["error"] == "images hold NaN or infinity"
        huge = b" " * (endpoint.max_body_bytes + 1)
        response = _post(client, served.alice, huge)
    assert response.status_code == 413 and "bytes" in response.json()["error"]


def test_rate_limit_counts_images_per_key(served, tmp_path):
    client, _, _ = _client(served, tmp_path, rate_limit="10/minute")
    with client:
        assert _post(client, served.alice, _images(8)).status_code == 200
        refused = _post(client, served.alice, _images(3))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert _post(client, served.alice, _images(2)).status_code == 200  # within the 10
        assert _post(client, served.bob, _images(8)).status_code == 200  # per key
    assert QueryLog(tmp_path / "log.sqlite", create=False).count() == 18


def test_the_log_refuses_other_databases_and_other_shapes(served, tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE mine (x INTEGER)")
    before = other.read_bytes()
    with pytest.raises(DataFileError, match="not an advforensics query log"):
        QueryLog(other)
    assert other.read_bytes() == before
    log = QueryLog(tmp_path / "log.sqlite")
    log.claim_shape((3, 32, 32))
    with pytest.raises(InputValidationError, match="shape"):
        Endpoint(served.record, served.keys, log)


def test_keys_file_keeps_hashes_only_and_belongs_to_its_record(served, workspace, tmp_path):
    text = served.keys.read_text()
    assert served.alice not in text and served.bob not in text
    assert oct(served.keys.stat().st_mode & 0o777) == "0o600"
    # the workspace's record has other copies: the keys file is refused there
    other = tmp_path / "other"
    run_ok(["trace", "separate", "--classifier", str(workspace / "zoo" / "lenet"), "--copies", "3", "--fit-size", "0",
            "--seed", "5", "--out", str(other)])
    with pytest.raises(Exception, match="another record"):
        Endpoint(other, served.keys, QueryLog(tmp_path / "log.sqlite"))
    assert json.loads(text)["format"] == "advforensics-buyer-keys/1"
