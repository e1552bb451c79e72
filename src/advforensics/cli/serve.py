"""`advforensics serve` and `advforensics buyers`: the seller's hard-label endpoint and its API keys
(`advforensics queries`, in cli/queries.py, reads the log it writes)."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand, ForensicsGroup
from advforensics.cli.options import seller_key_option

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


COMMANDS = [serve, buyers]
