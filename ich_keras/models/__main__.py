"""`python -m ich_keras.models`: the README's model table (weights with a 1000-class head at 224 px).

    python -m ich_keras.models                          # every model, built without running any initializer
    python -m ich_keras.models coatnet_0_rw_224 resnet50
    python -m ich_keras.models --list                   # names only, nothing built
"""

from __future__ import annotations

import math

from ich_keras import cli


def table(names: list[str], num_classes: int = 1000, image_size: int = 224) -> str:
    """A markdown table of each model's parameters (timm's count), Keras weights and source."""
    from ich_keras import _keras_compat, models

    lines = ["| model | parameters (= timm) | Keras weights (+ BN statistics) | source |", "|---|---:|---:|---|"]
    for name in names:
        # Counted from the variables' shapes: their values are never made (each initializer would compile and run,
        # a minute and GBs for the whole table).
        with _keras_compat.deferred_initializers():
            model = models.build(name, num_classes, image_size)
        weights = sum(math.prod(w.shape) for w in model.weights)
        lines.append(f"| `{name}` | {models.parameter_count(model):,} | {weights:,} | {models.entry(name).source} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.parser("python -m ich_keras.models", __doc__)
    parser.add_argument("names", nargs="*", metavar="MODEL", help="models to build (default: all)")
    parser.add_argument("--list", action="store_true", help="print the model names and build nothing")
    parser.add_argument("--num-classes", type=cli.positive_int, default=1000, help="head width (default: 1000)")
    parser.add_argument("--image-size", type=cli.positive_int, default=224, help="input side (default: 224)")
    args = parser.parse_args(argv)
    from ich_keras import models

    for name in args.names:
        models.check(name, args.image_size, "--image-size")  # before anything is built
    if args.list:
        print("\n".join(models.model_names()))
        return 0
    print(table(args.names or models.model_names(), args.num_classes, args.image_size))
    return 0


if __name__ == "__main__":
    cli.run(main)
