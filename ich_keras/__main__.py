"""`python -m ich_keras`: the commands, one line each. Each is `python -m ich_keras.<verb>`; `--help` after a verb
lists its options."""

from __future__ import annotations

from ich_keras import cli

# The verbs in the order a run uses them, then the tools beside them.
COMMANDS = {
    "fit": "train one model into a run directory, keeping the best checkpoints per metric (--config, --resume)",
    "soup": "average a run's kept checkpoints into soups, beside soft voting (cook, evaluate, monosoup, check)",
    "analyze": "per-class tables, prediction distances with an MDS map, bias-variance, a report (RUN_DIR/analysis)",
    "predict": "class probabilities of image files or folders, from a run's checkpoint or soup",
    "export": "a run's model with its preprocessing, as a SavedModel, TFLite or ONNX file",
    "curves": "a run's training curves alone, as a PNG",
    "sweep": "fits over a grid of config values, then soups across them",
    "convert": "a timm checkpoint (safetensors, or .pth read weights-only) as a .weights.h5 for model.init",
    "models": "the models there are, with their parameter counts against timm's",
}


def main(argv=None) -> int:
    parser = cli.parser("python -m ich_keras", __doc__)
    _, given = parser.parse_known_args(argv)
    if given:  # `python -m ich_keras fit ...`
        verb = given[0] if given[0] in COMMANDS else "<verb>"
        parser.error(f"the commands are modules of their own: python -m ich_keras.{verb} {' '.join(given[1:])}".strip())
    width = max(map(len, COMMANDS))
    print("python -m ich_keras.<verb> ...; the verbs:")
    for verb, what in COMMANDS.items():
        print(f"  {verb:<{width}}  {what}")
    return 0


if __name__ == "__main__":
    cli.run(main)
