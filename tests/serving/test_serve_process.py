"""`advforensics serve` as users run it: a real server process on loopback, a real hard-label attack
through HTTP from this process, the detector on its log, and a kill -9 that loses no answered query."""

from __future__ import annotations

import shutil
import socket
import threading

import httpx
import numpy as np
import orjson
import pytest
import torch
from click.testing import CliRunner
from serving_helpers import make_keys, run_ok

from advforensics.attacks import create_attack
from advforensics.cli.main import cli
from advforensics.data import load_dataset
from advforensics.serving.client import EndpointError, RemoteCopy
from advforensics.serving.local import LocalServer
from advforensics.serving.querylog import QueryLog
from advforensics.serving.traffic import benign_stream


def test_hopskipjump_through_http_works_on_labels_alone_is_logged_and_flagged(served, families_file, tmp_path):
    log = tmp_path / "queries.sqlite"
    test = load_dataset("digits", split="test")
    with LocalServer(served.record, served.keys, log, "--rate-limit", "1000000/second") as server:
        attacker = RemoteCopy(server.url, served.alice)
        labels = attacker.labels(test.images[:40])
        keep = torch.nonzero(labels == test.labels[:40]).flatten()[:3]
        x, y = test.images[keep], test.labels[keep]
        result = create_attack("hopskipjump", max_iter=5, max_eval=200, init_eval=20, seed=0)(attacker, x, y)
        assert bool(result.success.all())  # the attack needs nothing but the labels RemoteCopy returns
        assert bool((attacker.labels(result.x_adv) != y).all())
        benign = RemoteCopy(server.url, served.bob)
        stream = benign_stream(test.images, 300, seed=1)
        for start in range(0, 300, 20):
            benign.labels(stream[start:start + 20])
        with httpx.Client() as plain:
            answer = plain.post(f"{server.url}/v1/labels", headers={"Authorization": f"Bearer {served.alice}"},
                                content=orjson.dumps({"images": x[:1].numpy()}, option=orjson.OPT_SERIALIZE_NUMPY))
        assert set(answer.json()) == {"labels"}
    queries = QueryLog(log, create=False)
    assert queries.count("alice") == attacker.queries + 1 and queries.count("bob") == benign.queries == 300

    detector = tmp_path / "detector.json"
    run_ok(["queries", "calibrate", "--data", "digits", "--buyers", "200", "--queries", "200", "--false-flag-rate", "0.005",
            "--out", str(detector)])
    table = run_ok(["queries", "detect", "--log", str(log), "--detector", str(detector), "--families",
                    str(families_file), "--json", str(tmp_path / "detect.json")])
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| a") or line.startswith("| b")}
    assert "ATTACK IN PROGRESS" in rows["alice"] and "benign" in rows["bob"]
    found = {b["buyer"]: b for b in orjson.loads((tmp_path / "detect.json").read_bytes())["buyers"]}
    assert found["alice"]["flagged_at"] < 1000 and found["alice"]["copy"] == 1
    assert found["alice"]["family"] is not None and found["bob"]["family"] is None  # named only when flagged

    # the investigation takes the log beside the adversarial images: the flagged buyer is named with its copy
    np.savez(tmp_path / "advs.npz", x_adv=result.x_adv.numpy())
    run_ok(["investigate", str(tmp_path / "advs.npz"), "--record", str(served.record), "--query-log", str(log),
            "--detector", str(detector), "--families", str(families_file), "--out", str(tmp_path / "report")])
    payload = orjson.loads((tmp_path / "report" / "report.json").read_bytes())
    assert payload["queries"]["flagged"] == ["alice"]
    assert "flags 1 of 2 buyers: alice (copy 1" in payload["verdict"]
    summary = payload["summary"]
    if summary["trace_accused"]:  # then the log bears the accusation out exactly when it names copy 1
        assert payload["queries"]["corroborates_trace"] == (summary["traced_copy"] == 1)
    assert "## Query log" in (tmp_path / "report" / "report.md").read_text()
    assert 'class="queries"' in (tmp_path / "report" / "report.html").read_text()
    roles = {f["role"] for f in payload["custody"]["files"]}
    assert {"query log", "query detector", "query families"} <= roles


@pytest.mark.parametrize("round_", [0] + [pytest.param(i, marks=pytest.mark.slow) for i in range(1, 20)])
def test_kill_9_loses_no_answered_query(served, tmp_path, round_):
    """SIGKILL after 300 + 53 * round_ answered requests (20 rounds under -m slow: 20 kill moments)."""
    log = tmp_path / "queries.sqlite"
    kill_after = 300 + 53 * round_
    server = LocalServer(served.record, served.keys, log, "--rate-limit", "1000000/second").start()
    answered: list[tuple[str, int]] = []  # (request id, images)
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(headers={"Authorization": f"Bearer {served.alice}"}, timeout=10) as http:
            while not stop.is_set():
                n = int(rng.integers(1, 9))
                body = orjson.dumps({"images": rng.random((n, 1, 8, 8), dtype=np.float32)},
                                    option=orjson.OPT_SERIALIZE_NUMPY)
                try:
                    response = http.post(f"{server.url}/v1/labels", content=body)
                except httpx.TransportError:
                    return  # the server is gone
                if response.status_code == 200:
                    answered.append((response.headers["x-request-id"], n))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    while len(answered) < kill_after:
        threading.Event().wait(0.01)
    server.stop(kill=True)  # SIGKILL while requests are in flight
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    logged = QueryLog(log, create=False).read()
    per_request: dict[str, int] = {}
    for request_id in logged.request_ids.tolist():
        per_request[request_id] = per_request.get(request_id, 0) + 1
    assert len(answered) >= kill_after
    assert all(per_request.get(request_id) == n for request_id, n in answered)  # every answered image is there


def test_serve_refuses_bad_setups_in_one_line(served, workspace, tmp_path):
    def refused(args: list[str]) -> str:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1
        return lines[0]

    base = ["serve", "--record", str(served.record), "--log", str(tmp_path / "q.sqlite")]
    assert "no keys file" in refused([*base, "--keys", str(tmp_path / "none.json")])
    assert "--rate-limit" in refused([*base, "--keys", str(served.keys), "--rate-limit", "fast"])
    no_onnx = ["serve", "--record", str(workspace / "copies"), "--keys", str(tmp_path / "k.json"), "--log",
               str(tmp_path / "q2.sqlite")]
    assert "--no-onnx" in refused(["buyers", "add", "--record", str(workspace / "copies"), "--keys",
                                   str(tmp_path / "k.json"), "--buyer", "carol", "--copy", "0"])
    assert "no keys file" in refused(no_onnx)
    assert "copies 0-2" in refused(["buyers", "add", "--record", str(served.record), "--keys", str(tmp_path / "k.json"),
                                    "--buyer", "dan", "--copy", "7"])
    keys = tmp_path / "keys.json"
    shutil.copy(served.keys, keys)
    assert "already has a key" in refused(["buyers", "add", "--record", str(served.record), "--keys", str(keys),
                                           "--buyer", "alice", "--copy", "0"])
    assert "no buyer" in refused(["buyers", "revoke", "--keys", str(keys), "--buyer", "zed"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert "cannot listen" in refused([*base, "--keys", str(served.keys), "--port", str(port)])
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("my notes")
    assert "not a query log" in refused([*base[:3], "--log", str(not_a_log), "--keys", str(served.keys)])
    assert not_a_log.read_text() == "my notes"


def test_a_client_sees_refusals_as_errors(served, tmp_path):
    keys = tmp_path / "keys.json"
    shutil.copy(served.keys, keys)
    make_keys(served.record, keys, {"erin": 0})
    with LocalServer(served.record, keys, tmp_path / "q.sqlite") as server:
        try:
            RemoteCopy(server.url, "afk_wrong")
        except EndpointError as error:
            assert error.status == 401
        else:
            raise AssertionError("a wrong key was accepted")
