"""Scale-out on torchrun: the commands that run on several ranks, launched as a user launches them
(`torchrun --standalone --nproc-per-node 2 -m advforensics ...`, gloo on the CPU), against one process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.distributed import SINGLE, Ranks

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str], ranks: int = 2, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc-per-node={ranks}", "-m", "advforensics", "--", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def ok(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result.output


def shard_hashes(corpus: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((corpus / "shards").iterdir())}


def test_ranks_split_work_and_one_process_is_rank_0_of_1():
    assert [Ranks(r, 3).share(list(range(8))) for r in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert SINGLE.is_main and not SINGLE.distributed
    assert SINGLE.broadcast({"a": 1}) == {"a": 1} and SINGLE.all_gather(5) == [5]
    assert SINGLE.all_sum([1, 2.5]) == [1.0, 2.5]


def corpus_args(workdir: Path, out: Path, grid: str = "grid.json") -> list[str]:
    return ["attribution", "corpus", "--data", "digits", "--limit", "120", "--shard-images", "20", "--victims",
            str(workdir / "zoo"), "--grid", str(workdir / grid), "--clean-class", "--no-progress", "--out", str(out)]


def test_corpus_on_two_ranks_is_byte_identical_to_one_process(attribution_workdir, tmp_path):
    ok(corpus_args(attribution_workdir, tmp_path / "one"))
    code, out, err = finished(torchrun(corpus_args(attribution_workdir, tmp_path / "two")))
    assert code == 0, err[-2000:]
    assert out.count("corpus ") == 1  # rank 0 alone prints
    one, two = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "two"))
    assert two["complete"] and two["corpus_id"] == one["corpus_id"]
    assert shard_hashes(tmp_path / "two") == shard_hashes(tmp_path / "one")  # no rank's record is left over
    assert sorted(two["units"]) == sorted(one["units"])


def test_a_command_that_runs_in_one_process_refuses_several_ranks(tmp_path):
    code, out, err = finished(torchrun(["data", "list"]))
    assert code != 0 and out == ""
    assert "Error: rank 0 of 2: `advforensics data list` runs in one process; launch it without torchrun" in err


def test_a_rank_that_fails_fails_the_run_in_one_line(attribution_workdir, tmp_path):
    ok(corpus_args(attribution_workdir, tmp_path / "c"))
    code, _, err = finished(torchrun(corpus_args(attribution_workdir, tmp_path / "c")))  # exists, no --resume
    assert code != 0
    assert "Error: rank 0 of 2: " in err and "already holds a corpus; pass resume=True (--resume)" in err
    assert "Error: rank 1 of 2: rank 0 could not open the corpus: " in err


def _workers(launcher: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (read from /proc: Linux)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher and "RANK" in environ:
            ranks[int(environ["RANK"])] = int(entry.name)
    return ranks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers through /proc")
@pytest.mark.parametrize("kills", [1, pytest.param(5, marks=pytest.mark.slow)])
def test_a_rank_killed_mid_corpus_resumes_with_nothing_lost_or_duplicated(attribution_workdir, tmp_path, kills):
    # slow units (PGD, 400 steps) so that the kill lands while both ranks are working
    (attribution_workdir / "slow-grid.json").write_text(json.dumps(
        {"attacks": [{"name": "pgd-linf", "values": [40, 120], "params": {"steps": 400, "alpha_ratio": 0.05}}]}))
    ok(corpus_args(attribution_workdir, tmp_path / "one", "slow-grid.json"))
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    for trial in range(kills):
        out = tmp_path / f"killed-{trial}"
        rank = trial % 2 if kills > 1 else 1  # rank 0 (the manifest's writer) too
        units_before_kill = 4 + 3 * trial  # of 18
        launcher = torchrun(corpus_args(attribution_workdir, out, "slow-grid.json"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((out / "shards").glob("*.parquet"))) < units_before_kill:
            time.sleep(0.02)
        workers = _workers(launcher.pid)
        assert rank in workers, "torchrun's worker was not found (or the corpus finished before the kill)"
        os.kill(workers[rank], signal.SIGKILL)
        code, _, err = finished(launcher)
        assert code != 0  # the run fails; torchrun names the rank and its signal
        assert not json.loads((out / "manifest.json").read_text())["complete"]
        code, _, err = finished(torchrun([*corpus_args(attribution_workdir, out, "slow-grid.json"), "--resume"]))
        assert code == 0, err[-2000:]
        resumed = json.loads((out / "manifest.json").read_text())
        assert resumed["complete"] and resumed["corpus_id"] == one["corpus_id"]
        assert shard_hashes(out) == shard_hashes(tmp_path / "one")  # and no record is left over
        assert sum(e["n_examples"] for e in resumed["units"].values()) == \
            sum(e["n_examples"] for e in one["units"].values())


def test_models_train_on_two_ranks_writes_one_model_and_resumes(tmp_path):
    from advforensics.models import load_model

    args = ["models", "train", "--model", "lenet", "--data", "digits", "--epochs", "4", "--no-progress",
            "--out", str(tmp_path / "lenet")]
    code, out, err = finished(torchrun(args))
    assert code == 0, err[-2000:]
    assert out.count("test accuracy") == 1
    model, card = load_model(tmp_path / "lenet")
    assert card["ranks"] == 2 and card["test_accuracy"] >= 0.8  # 4 epochs of digits on 2 ranks
    # its training state belongs to a 2-rank run: one process refuses to resume it
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code != 0 and "number of ranks" in result.output
    code, out, err = finished(torchrun([*args, "--resume"]))  # two ranks resume it (all epochs done)
    assert code == 0, err[-2000:]
    assert load_model(tmp_path / "lenet")[1]["test_accuracy"] == card["test_accuracy"]


def test_attribution_train_on_two_ranks_learns_like_one_process(workspace, tmp_path):
    from advforensics.attribution.card import load_attributor

    args = ["attribution", "train", "--corpus", str(workspace / "corpus"), "--epochs", "4", "--width", "4",
            "--no-progress", "--seed", "0"]
    ok([*args, "--out", str(tmp_path / "one.safetensors")])
    code, out, err = finished(torchrun([*args, "--out", str(tmp_path / "two.safetensors")]))
    assert code == 0, err[-2000:]
    assert out.count("trained ") == 1
    one, two = (load_attributor(tmp_path / f"{name}.safetensors")[1] for name in ("one", "two"))
    assert two.steps == one.steps and two.n_train == one.n_train
    # same batches, gradients averaged over the ranks' halves: the losses follow one process's closely
    loss_one, loss_two = one.history[-1]["total"], two.history[-1]["total"]
    assert abs(loss_one - loss_two) < 0.25 * abs(loss_one) + 0.05, (one.history, two.history)
    assert (tmp_path / "two.train-state.safetensors").is_file()  # rank 0's state after every epoch
    code, _, err = finished(torchrun([*args, "--out", str(tmp_path / "two.safetensors"), "--resume", "--overwrite"]))
    assert code == 0, err[-2000:]  # every epoch was done: the resumed run trains no step and writes the same model
    assert load_attributor(tmp_path / "two.safetensors")[1].history == two.history


def test_attacks_run_on_two_ranks_is_the_one_process_campaign(workspace, tmp_path):
    import numpy as np

    args = ["attacks", "run", "--attack", "hopskipjump", "--weights", str(workspace / "zoo" / "lenet.safetensors"),
            "--data", "digits", "--n", "12", "--batch-size", "4", "--param", "max_iter=5", "--param", "max_eval=200"]
    ok([*args, "--out", str(tmp_path / "one.npz")])
    code, out, err = finished(torchrun([*args, "--out", str(tmp_path / "two.npz")]))
    assert code == 0, err[-2000:]
    assert out.count("success rate") == 1
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert sorted(one.files) == sorted(two.files)
        for key in ("x_adv", "success", "queries", "indices", "l2"):
            assert np.array_equal(one[key], two[key]), key


def test_trace_experiment_on_two_ranks_is_the_one_process_study(tmp_path, zoo_classifier):
    from advforensics.models import save_model

    save_model(zoo_classifier, tmp_path / "c", card={"data": "digits"})
    args = ["trace", "experiment", "--classifier", str(tmp_path / "c"), "--data", "digits", "--attacks",
            "hopskipjump", "--copies", "3", "--per-source", "6", "--stages", "tracing,field,peer",
            "--calibration-images", "60", "--fit-images", "700", "--param", "hopskipjump.max_iter=5",
            "--param", "hopskipjump.max_eval=200"]
    ok([*args, "--out", str(tmp_path / "one")])
    code, out, err = finished(torchrun([*args, "--out", str(tmp_path / "two")]))
    assert code == 0, err[-2000:]
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    for stage in ("tracing", "field", "peer"):  # the sources' attacks were split over the ranks
        assert two[stage] == one[stage], stage
    made = sorted(p.name for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert made == sorted(p.name for p in (tmp_path / "one").rglob("*") if p.is_file())


def test_the_slurm_example_is_valid_bash_and_separates_the_command_from_torchrun():
    script = Path(__file__).parents[1] / "scripts" / "slurm-corpus.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "-m advforensics -- attribution corpus" in text and "--rdzv-backend=c10d" in text
