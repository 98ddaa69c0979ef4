"""Prints the README's model table: `python -m ich_keras.models` (weights with a 1000-class head at 224 px)."""

from ich_keras import models


def main() -> None:
    # Trainable weights are timm's parameters; Keras also counts BatchNorm running statistics as weights.
    print("| model | parameters (= timm) | Keras weights (+ BN statistics) | source |")
    print("|---|---:|---:|---|")
    for name in models.model_names():
        model = models.build(name, 1000, 224)
        trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
        print(f"| `{name}` | {trainable:,} | {model.count_params():,} | {models.entry(name).source} |")


if __name__ == "__main__":
    main()
