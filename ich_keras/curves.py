"""`python -m ich_keras.curves RUN_DIR [--output PNG]`: a run's training curves as one PNG, without predictions.

The figure `python -m ich_keras.analyze` also draws (`ich_keras.analysis.curves.training_curves`): loss and accuracy
for train (on augmented batches) and val, macro F1 for val (and train where history.csv has it), the learning rate,
each kept checkpoint marked per metric. Default output: RUN_DIR/analysis/training.png.
"""

from __future__ import annotations

from pathlib import Path

from ich_keras import cli
from ich_keras.errors import UserError


def main(argv=None) -> int:
    """Parses the arguments, draws the figure, prints its path; returns the exit status."""
    from ich_keras.analysis.curves import training_curves

    parser = cli.parser("python -m ich_keras.curves", __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with history.csv")
    parser.add_argument("--output", default="", help="PNG to write (default RUN_DIR/analysis/training.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    if args.output:
        output = Path(args.output)
        if output.suffix.lower() != ".png":
            raise UserError(f"The curves are a PNG: --output must end in .png. Received: output={args.output!r}")
        cli.check_replaceable(output, args.overwrite)
    print(f"Wrote {training_curves(args.run_dir, args.output or None)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
