"""More copies than one tracer allows: copies read blocks of a tracer with G * K outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.tracing.calibration import deepfool_points
from advforensics.tracing.copies import CopyParams, CopySet, ModelCopy
from advforensics.tracing.permutations import (check_layout, copy_layout, make_permutations, max_copies,
                                               max_pairwise_agreement, tracer_blocks)
from advforensics.tracing.record import copy_hash, copyset_from_copies, load_copies, read_record, separate
from advforensics.tracing.scores import copy_scores
from advforensics.tracing.serving import export_onnx, onnx_labels
from advforensics.tracing.tracer import create_tracer


def _blocked(classifier: torch.nn.Module, m: int, seed: int = 0) -> CopySet:
    perms, blocks = copy_layout(10, m)
    tracer = create_tracer("random", image_size=8, length_scale=1.0, seed=seed, num_outputs=10 * tracer_blocks(10, m))
    return CopySet(classifier, tracer, perms, CopyParams(alpha=0.15, tau=2.0), blocks=blocks)


def test_layout_blocks_of_thirty_each_agreeing_at_most_once() -> None:
    perms, blocks = copy_layout(10, 100)
    assert tracer_blocks(10, 100) == 4 and tracer_blocks(10, 30) == 1 and tracer_blocks(10, 31) == 2
    assert torch.equal(blocks, torch.arange(100) // 30)
    for b in range(4):
        assert max_pairwise_agreement(perms[blocks == b]) <= 1
    # up to max_copies the layout is the single-tracer list, every copy in block 0
    small, zero = copy_layout(10, 30)
    assert torch.equal(small, make_permutations(10, 30)) and not zero.any()
    check_layout(perms, blocks, 40)
    with pytest.raises(InputValidationError, match="hold 3 blocks"):
        check_layout(perms, blocks, 30)
    with pytest.raises(InputValidationError, match="not a multiple"):
        check_layout(perms, blocks, 45)
    twice = perms[[0, 0]]
    check_layout(twice, torch.tensor([0, 1]), 20)  # one permutation in two blocks reads other outputs
    with pytest.raises(InputValidationError, match="block 0"):
        check_layout(twice, torch.tensor([0, 0]), 20)
    with pytest.raises(InputValidationError):
        copy_layout(10, 0)


def test_block_zero_is_the_single_tracer() -> None:
    """A 40-output random tracer's first 10 outputs are the 10-output tracer of the same seed, so
    records of up to 30 copies are unchanged by the layout."""
    x = torch.rand(20, 1, 8, 8)
    wide_tracer, narrow = (create_tracer("random", image_size=8, seed=3, num_outputs=n) for n in (40, 10))
    assert torch.equal(wide_tracer.w2[:10], narrow.w2) and torch.equal(wide_tracer.w1, narrow.w1)
    wide = wide_tracer(x)
    assert torch.allclose(wide[:, :10], narrow(x), atol=1e-6)  # same weights; matmul blocking differs
    assert not torch.allclose(wide[:, 10:20], wide[:, :10])


def test_hundred_copies_one_pass_equals_each_copy(tiny_classifier, digits_data) -> None:
    images, _ = digits_data
    copies = _blocked(tiny_classifier, 100)
    x = images[:40]
    scores, _ = copies.scores(x)  # (B, 100, K)
    t0 = copies.tracer(x)  # (B, 40)
    for i in (0, 29, 30, 31, 64, 99):
        copy = copies.copy(i)
        assert copy.block == i // 30
        assert torch.allclose(scores[:, i], copy(x), atol=1e-6)
        block = t0[:, 10 * copy.block:10 * copy.block + 10]
        assert torch.allclose(scores[:, i] - copy.classifier(x).div(2.0).softmax(1),
                              0.15 * block[:, copies.inverse[i] % 10], atol=1e-6)
    # copies 0 and 30 share a permutation but read other tracer outputs
    assert torch.equal(copies.permutations[0], copies.permutations[30])
    assert not torch.allclose(scores[:, 0], scores[:, 30])
    # a reassembled set keeps every copy's block
    again = copyset_from_copies([copies.copy(i) for i in range(100)])
    assert torch.equal(again.blocks, copies.blocks) and torch.equal(again.permutations, copies.permutations)


def test_boundary_points_of_a_hundred_copies_are_traced(tiny_classifier, digits_data) -> None:
    """Minimal-distance points on copies of every block carry their own copy's mark, not a sibling's
    with the same permutation in another block."""
    images, _ = digits_data
    copies = _blocked(tiny_classifier, 100)
    hits = total = 0
    for i in (1, 31, 61, 91, 45, 99):
        points, valid = deepfool_points(copies.copy(i), images[300:340])
        named = copy_scores(copies, points[valid], "proximity").argmax(1)
        hits, total = hits + int((named == i).sum()), total + int(valid.sum())
    assert total > 200 and hits / total > 0.9  # chance 0.01


def test_classifier_must_score_the_permutations_classes(tiny_classifier) -> None:
    tracer = create_tracer("random", image_size=8, num_outputs=10)
    with pytest.raises(InputValidationError, match="scores 10 classes"):
        ModelCopy(tiny_classifier, tracer, torch.arange(5), CopyParams())  # 5 fits 10 outputs, not C


def test_record_of_blocked_copies_round_trips_and_exports(zoo_classifier, digits_data,
                                                          tmp_path: Path) -> None:
    images, _ = digits_data
    copies = _blocked(zoo_classifier, 35)
    out = tmp_path / "copies"
    record = separate(zoo_classifier, copies.tracer, copies.permutations, copies.params, out, export=False,
                      blocks=copies.blocks)
    assert [e.tracer_block for e in record.copies] == [0] * 30 + [1] * 5
    # block-0 copies keep the hash they had before blocks existed
    first = record.copies[0]
    assert first.copy_hash == copy_hash(record.base_hash, record.tracer_hash, first.permutation, record.params)
    assert record.copies[30].copy_hash != copy_hash(record.base_hash, record.tracer_hash,
                                                    record.copies[30].permutation, record.params)
    loaded, again = load_copies(out)
    assert torch.equal(again.blocks, copies.blocks)
    assert torch.equal(again.labels(images[:100]), copies.labels(images[:100]))
    # the ONNX graph of a block-1 copy reads block 1
    export_onnx(again.copy(33), tmp_path / "c33.onnx", images[:2])
    assert torch.equal(onnx_labels(tmp_path / "c33.onnx", images[:200]), again.copy(33)(images[:200]).argmax(1))
    # an edited block fails the record hash; with the record hash recomputed, the copy hash
    payload = json.loads((out / "record.json").read_text())
    payload["copies"][31]["tracer_block"] = 0
    (out / "record.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="record hash"):
        read_record(out)
    from advforensics.tracing.record import _record_hash

    payload.pop("record_hash")
    payload["record_hash"] = _record_hash(payload)
    (out / "record.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="copy 31"):
        read_record(out)


def test_cli_separates_more_copies_than_one_tracer_allows(tmp_path: Path, zoo_classifier) -> None:
    from advforensics.models import save_model

    save_model(zoo_classifier, tmp_path / "c", card={"data": "digits"})
    runner = CliRunner()
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "64",
                                 "--length-scale", "1.0", "--no-onnx", "--out", str(tmp_path / "copies")])
    assert result.exit_code == 0, result.output
    record, copies = load_copies(tmp_path / "copies")
    assert copies.tracer.num_outputs == 30 and copies.blocks.tolist() == [0] * 30 + [1] * 30 + [2] * 4
    assert max_copies(10) == 30 and len(record.copies) == 64
    # a tracer file too small for the copies is one clear line
    from advforensics.tracing.tracer import save_tracer

    save_tracer(create_tracer("random", image_size=8), tmp_path / "small.safetensors")
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "31",
                                 "--tracer", str(tmp_path / "small.safetensors"), "--no-onnx",
                                 "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "need a tracer with 20 outputs" in result.output
    assert not (tmp_path / "other" / "record.json").exists()
    np.testing.assert_equal(len(result.output.strip().splitlines()), 1)
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "31",
                                 "--tracer", "vae", "--no-onnx", "--out", str(tmp_path / "vae")])
    assert result.exit_code == 2 and "enough for 30 copies" in result.output
