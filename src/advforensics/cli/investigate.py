"""`advforensics investigate`: one answer for a folder of suspicious images (attribution, tracing, both)."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand, command_line
from advforensics.cli.options import OutputDir, emit_json, json_option, seller_key_option


@click.command("investigate", cls=ForensicsCommand)
@click.argument("evidence", type=click.Path(exists=True, path_type=Path))
@click.option("--record", "record_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The seller record (`trace separate`): trace every image to the copy that made it.")
@click.option("--attributor", "attributor_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An attributor file (`attribution train`): name the attack, victim and strength of every image.")
@click.option("--query-log", "query_log", default=None,
              help="The seller's query log (`serve`): name the buyers whose queries show an attack in progress.")
@click.option("--detector", "detector_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The query detector (`queries calibrate`); needed with --query-log.")
@click.option("--families", "families_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The attack-family model (`queries families`): name each flagged buyer's attack.")
@seller_key_option
@click.option("--threshold", type=float, default=0.99, show_default=True,
              help="Confidence at which a copy is accused.")
@click.option("--out", "out_dir", required=True, type=OutputDir(),
              help="Directory for report.html (self-contained), report.json, report.md and SHA256SUMS.")
@json_option
def investigate(evidence: Path, record_dir: Path | None, attributor_path: Path | None, query_log: str | None,
                detector_path: Path | None, families_path: Path | None, seller_key: Path | None,
                threshold: float, out_dir: Path, json_path: Path | None) -> None:
    """Investigate EVIDENCE (an .npz/.npy, an image, or a folder of images): were these attacked, how,
    against what, and which buyer's copy made them, with how much confidence.

    \b
    Example:
      advforensics investigate runs/demo/advs.npz --record runs/demo/copies \\
          --seller-key runs/demo/keys/seller.pub --attributor runs/demo/mtaa-fx.safetensors --out runs/investigation
      advforensics investigate advs.npz --record runs/copies --query-log runs/queries.sqlite \\
          --detector runs/detector.json --families runs/families.json --out runs/investigation
    """
    from advforensics.errors import InputValidationError
    from advforensics.investigation import investigate as run

    if not 0.5 < threshold < 1.0:
        raise InputValidationError(f"--threshold must be in (0.5, 1), got {threshold}")
    result = run(evidence, record=record_dir, attributor=attributor_path, seller_key=seller_key, threshold=threshold,
                 command=command_line(click.get_current_context()), query_log=query_log, detector=detector_path,
                 families=families_path)
    files = result.write(out_dir)
    click.echo(result.verdict)
    for caveat in result.payload["caveats"]:
        click.echo(f"  caveat: {caveat}")
    click.echo(f"report: {files[0]} (also {', '.join(f.name for f in files[1:])})")
    emit_json(json_path, result.payload)


COMMANDS = [investigate]
