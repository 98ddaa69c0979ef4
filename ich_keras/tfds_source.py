"""`data.source = "tfds:NAME"`: a TensorFlow Datasets dataset, written once as an ImageFolder tree.

    pip install 'ich_keras[tfds]'
    python -m ich_keras.fit --config configs/demo.toml --set data.source=tfds:beans --workdir runs/beans

Materialising to files keeps one code path (scan, check, split lists of relative paths) for every source, and makes
the run directory independent of tfds afterwards: `ich_keras.data.resolve_source` turns "tfds:NAME" into the tree's
absolute path, which is what `config.json` records. The tree lands in `$ICH_KERAS_TFDS_DIR/NAME` (default
~/.cache/ich_keras/tfds/NAME); tfds itself prepares its files in `$TFDS_DATA_DIR` (default ~/tensorflow_datasets),
downloading them the first time. A second run finds the tree complete and touches neither tfds nor the network.

Images are copied as tfds stores them (its encoded PNG/JPEG bytes, not decoded and re-encoded); tfds' "train",
"validation" and "test" splits become train/, val/ and test/. Meant for datasets of the toolkit's size (thousands
to tens of thousands of images): every image becomes a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from ich_keras.errors import UserError, first_line

PREFIX = "tfds:"
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
# Written last inside the tree: its presence marks a complete tree (a crash leaves only a hidden partial folder).
COMPLETE = ".tfds_source.json"
MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"RIFF", ".webp"))


def cache_root(name: str) -> Path:
    """Where the ImageFolder tree of tfds dataset `name` is (or will be) written."""
    base = Path(os.environ.get("ICH_KERAS_TFDS_DIR", "~/.cache/ich_keras/tfds")).expanduser()
    # "eurosat/rgb:2.*.*" is a valid tfds name; keep one flat folder per name.
    return base / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def materialize(name: str) -> str:
    """Prepares tfds dataset `name` (downloading it if needed) and writes it as an ImageFolder tree, once.

    Args:
        name: a tfds name (with config/version if wanted) whose examples have an image and a class label.

    Returns:
        The absolute root directory holding train/ (and val/, test/ when tfds has them).
    """
    root = cache_root(name)
    if (root / COMPLETE).is_file():
        return str(root.resolve())
    tfds = _import_tfds(name)
    try:
        # $TFDS_DATA_DIR read now, not when tfds was first imported (tfds fixes its default at import).
        builder = tfds.builder(name, data_dir=os.environ.get("TFDS_DATA_DIR") or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"tensorflow-datasets knows no dataset {name!r}: it is neither registered nor prepared in the tfds "
            f"data_dir ($TFDS_DATA_DIR). Names are listed at https://www.tensorflow.org/datasets/catalog. "
            f"Received: data.source={PREFIX + name!r}"
        ) from None
    write_image_folder(builder, root, source=PREFIX + name)
    return str(root.resolve())


def _import_tfds(name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(
            f"tfds sources need the tensorflow-datasets package: pip install -e '.[tfds]' in the ich_keras checkout "
            f"(or pip install tensorflow-datasets). Received: data.source={PREFIX + name!r}"
        ) from None
    return tfds


def image_label_keys(builder, source: str) -> tuple[str, str]:
    """The names of the builder's image feature and class-label feature.

    Its `supervised_keys` when they name an Image and a ClassLabel feature, else "image" and "label".

    Raises:
        UserError naming the source and its features when there is no such pair.
    """
    import tensorflow_datasets as tfds

    features = dict(builder.info.features.items())
    keys = builder.info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        keys = ("image", "label")
    image_key, label_key = keys
    if not (
        isinstance(features.get(image_key), tfds.features.Image)
        and isinstance(features.get(label_key), tfds.features.ClassLabel)
    ):
        found = {key: type(feature).__name__ for key, feature in features.items()}
        raise UserError(
            f"A tfds source needs an Image feature and a ClassLabel feature ({image_key!r} and {label_key!r}, "
            f"or its supervised_keys); its features are {found}. Received: data.source={source!r}"
        )
    return image_key, label_key


def class_folders(names: list[str], source: str) -> list[str]:
    """Folder names for the class names, in label order (a path separator becomes "_")."""
    folders = [name.replace("/", "_").replace(os.sep, "_") or "_" for name in names]
    if len(set(folders)) != len(folders):
        raise UserError(f"Class names collide as folder names: {folders}. Received: data.source={source!r}")
    return folders


def write_image_folder(builder, root: str | Path, source: str) -> Path:
    """Prepares `builder` and writes its splits as `root/{train,val,test}/<class>/<index>.<ext>`.

    The tree is written under a hidden partial name beside `root` and renamed into place when complete, so a crash
    never leaves a half tree that looks finished.

    Args:
        builder: a tfds `DatasetBuilder` (a registered one, one read from prepared files, or tfds'
            `folder_dataset.ImageFolder`).
        root: the tree to write.
        source: what the user asked for, for error messages (e.g. "tfds:beans").

    Returns:
        `root`.
    """
    import tensorflow_datasets as tfds

    root = Path(root)
    image_key, label_key = image_label_keys(builder, source)  # before a download that would be wasted
    if not isinstance(builder, tfds.folder_dataset.ImageFolder):  # which refuses download_and_prepare
        try:
            builder.download_and_prepare()
        except OSError as error:  # requests' ConnectionError (no network) and disk errors are OSErrors
            data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
            raise UserError(
                f"tensorflow-datasets could not download or prepare {builder.name!r} "
                f"({type(error).__name__}: {first_line(error)}). tfds needs the internet the first time: prepare it "
                f"where there is a connection (python -c \"import tensorflow_datasets as tfds; "
                f"tfds.builder('{builder.name}').download_and_prepare()\") and copy its folder into "
                f"$TFDS_DATA_DIR ({data_dir}), or give data.source an ImageFolder directory. "
                f"Received: data.source={source!r}"
            ) from None
    # Known once prepared (a generator builder learns its splits by generating them).
    splits = {tfds_split: SPLIT_NAMES[tfds_split] for tfds_split in builder.info.splits if tfds_split in SPLIT_NAMES}
    if "train" not in splits:
        raise UserError(
            f"A tfds source needs a 'train' split; it has {list(builder.info.splits)}. Received: data.source={source!r}"
        )
    folders = class_folders(builder.info.features[label_key].names, source)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    counts, unlabelled, left_out, train_labels = {}, {}, {}, set()
    for tfds_split, split in sorted(splits.items(), key=lambda item: item[1] != "train"):  # train first
        dataset = builder.as_dataset(split=tfds_split, decoders={image_key: tfds.decode.SkipDecoding()})
        labels, unlabelled[split], counts[split] = set(), 0, 0
        for index, example in enumerate(tfds.as_numpy(dataset)):
            label = int(example[label_key])
            if label < 0:  # tfds' ClassLabel for "no label" (imagenet2012's test split)
                unlabelled[split] += 1
                continue
            data = example[image_key]
            path = partial / split / folders[label] / f"{index:07d}{_extension(data)}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            labels.add(label)
            counts[split] += 1
        if unlabelled[split] and labels:
            print(f"{source}: {unlabelled[split]} examples of its {tfds_split} split have no label and are left out",
                  file=sys.stderr, flush=True)
        if split == "train":
            if not labels:
                shutil.rmtree(partial, ignore_errors=True)
                raise UserError(f"The tfds train split has no labelled example ({unlabelled[split]} without a label): "
                                f"nothing to train on. Received: data.source={source!r}")
            train_labels = labels
        elif why := _why_left_out(labels, unlabelled[split], train_labels, folders):
            shutil.rmtree(partial / split, ignore_errors=True)  # val / test are then carved from train
            left_out[split], counts[split] = why, 0
            print(f"{source}: its {tfds_split} split is left out ({why}); {split} is carved from train",
                  file=sys.stderr, flush=True)
    record = {"source": source, "tfds": builder.info.full_name, "classes": folders, "examples": counts,
              "unlabelled": unlabelled, "left_out": left_out}
    (partial / COMPLETE).write_text(json.dumps(record, indent=2) + "\n")
    _move_into_place(partial, root)
    return root


def _why_left_out(labels: set[int], unlabelled: int, train_labels: set[int], folders: list[str]) -> str:
    """Why a tfds val or test split cannot be one of the tree's, or "": its examples have no labels, or its classes
    are not train's (every split of an ImageFolder tree holds the same class folders)."""
    if not labels:
        return f"its {unlabelled} examples have no label" if unlabelled else "it is empty"
    if missing := sorted(train_labels - labels):
        return f"it has no example of {len(missing)} of the train classes, e.g. {folders[missing[0]]!r}"
    if extra := sorted(labels - train_labels):
        return f"it has {len(extra)} classes train has no example of, e.g. {folders[extra[0]]!r}"
    return ""


def _extension(data: bytes) -> str:
    return next((ext for magic, ext in MAGIC if data.startswith(magic)), ".img")


def _move_into_place(partial: Path, root: Path) -> None:
    """Renames the finished tree to `root`, replacing an unfinished one; another process finishing first wins."""
    if root.exists() and not (root / COMPLETE).is_file():
        shutil.rmtree(root)  # left by a crash of an older version that wrote in place
    try:
        os.replace(partial, root)
    except OSError:
        if not (root / COMPLETE).is_file():
            raise
        shutil.rmtree(partial)
