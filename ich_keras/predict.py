"""`python -m ich_keras.predict`: class probabilities for new photos.

    python -m ich_keras.predict runs/demo photos/ more.jpg --top-k 3
    python -m ich_keras.predict runs/demo photos/ --weights soups/greedy/soup.weights.h5 \\
        --output predictions.csv --tta flip

The command checks, decodes, resizes and normalises images exactly as evaluation does (`ich_keras.inference`);
unreadable files are listed with the reason, and the exit status is 1 when any input failed. An input that is not
there stops it before the model loads (exit status 2).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from ich_keras import cli, compile_cache, image_files, summaries
from ich_keras.errors import UserError, relative_to_cwd


def shown(path: str) -> str:
    """A path as text that can be written anywhere: the bytes of a file name that is not UTF-8 (Python keeps them
    as surrogates) become \\x escapes instead of failing the table, CSV or JSON after every image was predicted."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _copies(result) -> list[str]:
    """Per row, the train image it is a copy of, or "" (arrays and older runs: none known)."""
    return list(result.copies_of_train) or [""] * len(result.paths)


def _rows(result, k: int) -> list[dict]:
    rows = [{"path": shown(path), "top_k": [{"class": name, "probability": prob} for name, prob in top],
             **({"copy_of_train": copy} if copy else {})}
            for path, top, copy in zip(result.paths, result.top_k(k), _copies(result))]
    return rows + [{"path": shown(path), "error": reason} for path, reason in result.errors]


def _check_output(path: Path) -> None:
    """A .csv or .json that is absent or a previous predictions file (re-running replaces it); anything else the
    user has there is left untouched."""
    if path.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"Unknown output format; use a .csv or .json file. Received: output={str(path)!r}")
    if path.exists() and not _is_previous_predictions(path):
        raise UserError(f"The output exists and is not a previous predictions file, so it is left untouched; choose "
                        f"another --output. Received: output={str(path)!r}")


def _check_inputs(inputs: list[str]) -> None:
    """Raises a UserError naming every input that is not there: a mistyped path is a mistake to fix before the
    model loads, not a file to list among the unreadable ones after predicting the rest."""
    missing = [path for path in inputs if not os.path.lexists(path)]  # a broken link is listed as unreadable later
    if missing:
        where = relative_to_cwd(".") if any(not Path(path).is_absolute() for path in missing) else ""
        patterns = any(char in path for path in missing for char in "*?[")
        quoted = " (a quoted pattern? the shell expands it only unquoted; or pass the folder)" if patterns else ""
        raise UserError(f"{len(missing)} input(s) not found: {', '.join(missing)}{where}{quoted}. "
                        "Nothing was predicted; correct the path(s).")


def _is_previous_predictions(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                return f.readline().startswith("path,class_1,probability_1,")
            content = json.load(f)
            return isinstance(content, dict) and "predictions" in content
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return False


def write_predictions(result, path: str | Path, k: int, weights: str) -> None:
    """Writes predictions (and the unreadable files with their reasons) to a .csv or .json file, atomically.

    CSV columns: path, class_1, probability_1, ..., class_k, probability_k, error (only failed rows fill it),
    copy_of_train (the run's train image the file is a copy of, if any: `ich_keras.copies`).

    Args:
        result: an `ich_keras.inference.Predictions`.
        path: output file; its suffix picks the format.
        k: how many classes per image.
        weights: the weights file, recorded in the JSON header.
    """
    from ich_keras import atomic

    path = Path(path)
    _check_output(path)
    if path.suffix.lower() == ".json":
        atomic.write_json(path, {"weights": weights, "class_names": list(result.class_names),
                                 "predictions": _rows(result, k)})
        return
    k = min(k, len(result.class_names))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")]
                    + ["error", "copy_of_train"])
    for file, top, copy in zip(result.paths, result.top_k(k), _copies(result)):
        writer.writerow([shown(file)] + [v for name, prob in top for v in (name, f"{prob:.6f}")] + ["", copy])
    for file, reason in result.errors:
        writer.writerow([shown(file)] + [""] * (2 * k) + [reason, ""])
    atomic.write_text(path, text.getvalue())


def main(argv=None) -> int:
    """`python -m ich_keras.predict`; returns the exit status (0: all predicted, 1: some inputs failed)."""
    parser = cli.parser("python -m ich_keras.predict", __doc__)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by python -m ich_keras.fit")
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS", help="image files and folders (recursive)")
    parser.add_argument("--weights", help="a .weights.h5 (path, or relative to RUN_DIR, e.g. "
                        "soups/greedy/soup.weights.h5); default: best checkpoint by val accuracy, ties to the lower "
                        "val loss")
    parser.add_argument("--top-k", type=cli.positive_int, default=5, help="classes listed per image (default 5)")
    parser.add_argument("--output", help="predictions.csv or predictions.json (default: a table on stdout)")
    parser.add_argument("--tta", choices=("none", "flip"), default="none",
                        help="flip: mean of the image's and its horizontal mirror's probabilities")
    parser.add_argument("--batch-size", type=cli.positive_int, default=32,
                        help="images a forward pass (default 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    compile_cache.enable()
    if args.output:
        _check_output(Path(args.output))  # before minutes of predicting
    _check_inputs(args.inputs)

    from ich_keras.inference import load

    summaries.announce("predict", args.run_dir, f"predicting {len(args.inputs)} input(s) (files or folders)"
                       + (f" into {args.output}" if args.output else ""))
    predictor = load(args.run_dir, args.weights, batch_size=args.batch_size, tta=args.tta)
    print(f"Weights: {predictor.weights_path}", file=sys.stderr)
    if args.tta == "flip" and not predictor.run.config.augment.flip:
        print("Note: --tta flip averages each image with its mirror, but this run trained without flips "
              "(augment.flip = false): the mirrors are images of a kind it never saw", file=sys.stderr)
    result = predictor.predict_files(args.inputs, progress=not args.quiet)
    if args.output:
        write_predictions(result, args.output, args.top_k, str(predictor.weights_path))
        print(f"{len(result.paths)} prediction(s)", file=sys.stderr)
        print(summaries.outputs_summary([args.output]), file=sys.stderr)
    else:
        for file, top, copy in zip(result.paths, result.top_k(args.top_k), _copies(result)):
            print(shown(file) + "\t" + "  ".join(f"{name} {prob:.4f}" for name, prob in top)
                  + (f"\t(a copy of train image {copy})" if copy else ""))
    copies = [(file, copy) for file, copy in zip(result.paths, _copies(result)) if copy]
    if copies:
        print(f"{len(copies)} image(s) are copies of the run's train images (e.g. {shown(copies[0][0])} of "
              f"{copies[0][1]}): their predictions say little about new photos", file=sys.stderr)
    if result.left_out:
        print(f"Left out {image_files.describe_left_out([shown(f) for f in result.left_out])}", file=sys.stderr)
    if result.errors:
        print(f"{len(result.errors)} input(s) could not be read:", file=sys.stderr)
        for file, reason in result.errors:
            print(f"  {shown(file)}: {reason}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    cli.run(main)
