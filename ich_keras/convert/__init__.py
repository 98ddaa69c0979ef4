"""timm checkpoint -> ich_keras model: `convert(name, state_dict, num_classes, image_size)` (in `core`).

    python -m ich_keras.convert --model coatnet_0_rw_224 --checkpoint model.safetensors \\
        --output coatnet_0.weights.h5 [--num-classes 17] [--image-size 64] [--check]

The names below are imported on first use: `python -m ich_keras.convert --check` runs this file before its
`__main__`, and torch must be imported before TensorFlow (timm segfaults at import the other way round).
"""

__all__ = ["convert", "checkpoint_num_classes", "head_layer_name", "load_state_dict"]


def __getattr__(name):
    if name in __all__:
        from ich_keras.convert import core

        return getattr(core, name)
    raise AttributeError(f"module 'ich_keras.convert' has no attribute {name!r}")
