"""`python -m ich_keras.analyze`: why the soups of a run work, in one report.

    python -m ich_keras.fit --config configs/demo.toml && python -m ich_keras.soup runs/demo
    python -m ich_keras.analyze runs/demo                   # -> runs/demo/analysis/report.md
    python -m ich_keras.analyze runs/demo --split test --soup greedy

Outputs are listed in `ich_keras.analysis.runner`; predictions are cached in analysis/predictions.npz, so a
second call only redraws.
"""

from __future__ import annotations

import argparse

import ich_keras  # noqa: F401  (JAX backend)
from ich_keras import compile_cache


def main(argv=None) -> dict:
    from ich_keras.analysis.runner import SPLITS, AnalysisOptions, analyze

    parser = argparse.ArgumentParser(prog="python -m ich_keras.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run directory written by python -m ich_keras.fit")
    parser.add_argument("--split", choices=SPLITS, default="val",
                        help="split for distances, MDS, per-class and bias-variance (accuracy plots show both)")
    parser.add_argument("--soup", default="", help="soup for the per-class table (default: uniform)")
    parser.add_argument("--diagonal", choices=("subtract", "zero"), default="subtract",
                        help="MDS input: subtract each model's self-distance 2H(p,p) (symmetrised KL), "
                             "or zero the diagonal")
    parser.add_argument("--pretrained", default="", help="pretrained .weights.h5 for CKA (default: model.init)")
    parser.add_argument("--cka-examples", type=int, default=256, help="images used for CKA")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--recompute", action="store_true", help="ignore the predictions cache")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    compile_cache.enable()
    options = AnalysisOptions(split=args.split, soup=args.soup, diagonal=args.diagonal, pretrained=args.pretrained,
                              cka_examples=args.cka_examples, batch_size=args.batch_size, recompute=args.recompute,
                              progress=not args.quiet)
    summary = analyze(args.run_dir, options)
    print(f"Wrote {summary['output_dir']}/report.md in {summary['seconds']:.1f} s "
          f"(best single {summary['best_single']}, soup {summary['soup']}, MDS stress {summary['stress']:.3f})")
    return summary


if __name__ == "__main__":
    main()
