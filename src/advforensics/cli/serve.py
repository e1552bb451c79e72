"""`advforensics serve` and `advforensics buyers`: the seller's hard-label endpoint and its API keys."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand, ForensicsGroup
from advforensics.cli.options import OutputFile, emit_json, json_option, seed_option, seller_key_option

record_option = click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                             help="The seller record (`trace separate`, with its ONNX copies).")
keys_option = click.option("--keys", "keys_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
                           help="The buyers' keys file (`buyers add` makes it).")


@click.command("serve", cls=ForensicsCommand)
@record_option
@keys_option
@click.option("--log", "log_target", required=True,
              help="The query log: a SQLite file (made if absent, appended to if present) or a database URL.")
@seller_key_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free one, printed).")
@click.option("--max-batch", type=int, default=256, show_default=True, help="Most images per request.")
@click.option("--rate-limit", default="2000/second", show_default=True,
              help="Images per key, e.g. 1000/second or 50000/hour.")
@click.option("--log-images", is_flag=True, help="Also store every image in the log (not only its sketch and hash).")
def serve(record_dir: Path, keys_path: Path, log_target: str, seller_key: Path | None, host: str, port: int,
          max_batch: int, rate_limit: str, log_images: bool) -> None:
    """Serve each buyer's copy as a hard-label endpoint (labels only), logging every query.

    \b
    Example:
      advforensics buyers add --record runs/copies --keys runs/keys.json --buyer alice --copy 0
      advforensics serve --record runs/copies --keys runs/keys.json --log runs/queries.sqlite --port 8000
      curl -H "Authorization: Bearer $KEY" -d '{"images": [...]}' http://127.0.0.1:8000/v1/labels
    """
    from advforensics.serving.app import Endpoint, ServeConfig, serve as run

    config = ServeConfig(max_batch=max_batch, rate_limit=rate_limit, log_images=log_images).checked()
    endpoint = Endpoint(record_dir, keys_path, log_target, config, public_key=seller_key)
    active = [b for b in endpoint.keys.keys.buyers if b.active]
    run(endpoint, host=host, port=port,
        announce=lambda url: click.echo(f"serving {len(active)} buyer key(s) on {url} (log: {log_target})"))


@click.group("buyers", cls=ForensicsGroup)
def buyers() -> None:
    """The buyers' API keys of a served record: add, revoke, list.

    \b
    Example:
      advforensics buyers add --record runs/copies --keys runs/keys.json --buyer alice --copy 0
      advforensics buyers revoke --keys runs/keys.json --buyer alice
    """


@buyers.command("add")
@record_option
@keys_option
@click.option("--buyer", "name", required=True, help="The buyer's name (letters, digits, '-', '_', '.').")
@click.option("--copy", "copy_index", type=int, required=True, help="The copy this buyer's key opens.")
@seller_key_option
def add(record_dir: Path, keys_path: Path, name: str, copy_index: int, seller_key: Path | None) -> None:
    """Make a key for a buyer; it is printed once (the file keeps only its hash)."""
    from advforensics.serving.keys import read_keys, write_keys
    from advforensics.tracing.record import read_record

    record = read_record(record_dir, public_key=seller_key)
    keys = read_keys(keys_path)
    keys.check_against(record)
    keys, key = keys.add(name, copy_index, record)
    write_keys(keys_path, keys)
    click.echo(f"buyer {name} -> copy {copy_index}; key (shown once, keep it secret):")
    click.echo(key)


@buyers.command("revoke")
@keys_option
@click.option("--buyer", "name", required=True, help="The buyer whose key stops working (401 from now on).")
def revoke(keys_path: Path, name: str) -> None:
    """Revoke a buyer's key; a running server applies it at the next request."""
    from advforensics.errors import InputValidationError
    from advforensics.serving.keys import read_keys, write_keys

    if not keys_path.is_file():
        raise InputValidationError(f"no keys file at {keys_path}")
    write_keys(keys_path, read_keys(keys_path).revoke(name))
    click.echo(f"revoked {name}")


@buyers.command("list")
@keys_option
def list_buyers(keys_path: Path) -> None:
    """The buyers, their copies and whether their key is active."""
    import datetime

    from advforensics.errors import InputValidationError
    from advforensics.serving.keys import read_keys

    if not keys_path.is_file():
        raise InputValidationError(f"no keys file at {keys_path}")
    for buyer in read_keys(keys_path).buyers:
        state = "active" if buyer.active else \
            f"revoked {datetime.datetime.fromtimestamp(buyer.revoked, datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
        click.echo(f"{buyer.name}\tcopy {buyer.copy_index}\t{state}")


@click.group("queries", cls=ForensicsGroup)
def queries() -> None:
    """Query forensics on a served copy's log: calibrate the detector, find attacks in progress.

    \b
    Example:
      advforensics queries calibrate --data mnist --out runs/detector.json
      advforensics queries detect --log runs/queries.sqlite --detector runs/detector.json
    """


@queries.command("calibrate")
@click.option("--data", "data_name", required=True, help="The seller's own images (a data set name, e.g. mnist).")
@click.option("--data-dir", default=None, help="Directory of the data set.")
@click.option("--split", default="train", show_default=True, help="Split the benign buyers draw from.")
@click.option("--buyers", "n_buyers", type=int, default=40, show_default=True, help="Simulated benign buyers.")
@click.option("--queries", "n_queries", type=int, default=1000, show_default=True, help="Queries per benign buyer.")
@click.option("--false-hit-rate", type=float, default=1e-3, show_default=True,
              help="Share of benign queries that may count as hits.")
@click.option("--hits", "hits_to_flag", type=int, default=5, show_default=True, help="Hits that flag a buyer.")
@seed_option
@click.option("--out", "out_path", required=True, type=OutputFile(), help="The detector file (JSON) to write.")
def calibrate(data_name: str, data_dir: str | None, split: str, n_buyers: int, n_queries: int, false_hit_rate: float,
              hits_to_flag: int, seed: int, out_path: Path) -> None:
    """Set the detector's threshold on simulated benign buyers (the seller's images, augmented); no attack."""
    from advforensics.data import load_dataset
    from advforensics.errors import InputValidationError
    from advforensics.serving.detection import calibrate_on_images

    if not 0 < false_hit_rate < 0.5 or n_buyers < 1 or n_queries < 2:
        raise InputValidationError("need 0 < --false-hit-rate < 0.5, --buyers >= 1 and --queries >= 2")
    pool = load_dataset(data_name, split=split, data_dir=data_dir).images
    detector = calibrate_on_images(pool, buyers=n_buyers, queries=n_queries, false_hit_rate=false_hit_rate,
                                   seed=seed, hits_to_flag=hits_to_flag)
    detector.calibration.update(data=data_name, split=split)
    detector.save(out_path)
    click.echo(f"threshold {detector.config.threshold:.4f} (k {detector.config.k}, {hits_to_flag} hits flag a buyer) "
               f"from {n_buyers} x {n_queries} benign queries -> {out_path}")


@queries.command("detect")
@click.option("--log", "log_target", required=True, help="The query log of `serve` (a SQLite file or database URL).")
@click.option("--detector", "detector_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The detector file of `queries calibrate`.")
@json_option
def detect(log_target: str, detector_path: Path, json_path: Path | None) -> None:
    """Per buyer: queries, hits and whether (and at which query) an attack in progress was flagged."""
    from dataclasses import asdict

    from advforensics.serving.detection import QueryDetector, detect as run
    from advforensics.serving.querylog import QueryLog

    detector = QueryDetector.load(detector_path)
    query_log = QueryLog(log_target, create=False)
    if query_log.image_shape is not None and query_log.image_shape != detector.image_shape:
        from advforensics.errors import InputValidationError

        raise InputValidationError(f"the detector was calibrated on images {list(detector.image_shape)}, the log "
                                   f"holds {list(query_log.image_shape)}; calibrate on the served data")
    verdicts = run(query_log.read(), detector.config)
    click.echo("| buyer | queries | hits | flagged at query | verdict |")
    click.echo("| --- | --- | --- | --- | --- |")
    for v in verdicts:
        verdict = "ATTACK IN PROGRESS" if v.flagged else "benign"
        click.echo(f"| {v.buyer} | {v.queries} | {v.hits} | {v.flagged_at if v.flagged else '-'} | {verdict} |")
    emit_json(json_path, {"detector": detector.config.to_dict(), "buyers": [asdict(v) for v in verdicts]})


COMMANDS = [serve, buyers, queries]
