"""A data folder laid out as a collection arrives: class folders without a train/ folder, class names written
differently in two splits. `fit` stops before any model is built, saying what to change."""

import shutil
import unicodedata

import pytest
from image_folder import noise_folder

from ich_keras import class_folders, cli, data, fit
from ich_keras.config import DataConfig


def _fit_error(source, tmp_path, capsys) -> str:
    """`python -m ich_keras.fit` on `source` with a tiny config; returns its one-line user error."""
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nsource = "{source.as_posix()}"\nimage_size = 32\n[model]\nname = "coatnet_tiny"\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.run(fit.main, ["--config", str(config), "--workdir", str(tmp_path / "run")])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    return capsys.readouterr().err.splitlines()[0]


def test_class_folders_without_a_train_folder_are_told_where_to_go(tmp_path, capsys):
    """DIR/<class>/*, as torchvision and Keras take a folder: the error says to move the classes into DIR/train/, from
    which val and test are carved."""
    root = noise_folder(tmp_path, classes=("Altar Piece", "apse", "dome"), per_class=3)
    flat = tmp_path / "photos"
    (root / "train").rename(flat)
    (flat / ".thumbnails").mkdir()  # hidden: no class
    err = _fit_error(flat, tmp_path, capsys)
    assert (
        "there is no train folder; its 3 folders (Altar Piece, apse, dome) look like class folders: move them "
        f"into {flat / 'train'}/ (val and test are then carved from them: data.val_fraction" in err
    )
    assert not (tmp_path / "run").exists()
    # A folder with a split folder but no train/ is not a class layout: the error says only what is missing.
    (flat / "test").mkdir()
    assert "look like class folders" not in _fit_error(flat, tmp_path, capsys)


def test_class_folders_whose_names_differ_only_in_how_accents_are_written_are_named_escaped(tmp_path, capsys):
    """A test split unpacked from a Mac's zip writes "é" as "e" and a combining accent (NFD): the names read alike, so
    the error escapes them and says how to make them one."""
    root = noise_folder(tmp_path, classes=("apsé", "dome"), per_class=3, splits=("train", "test"))
    shutil.move(root / "test" / "apsé", root / "test" / unicodedata.normalize("NFD", "apsé"))
    err = _fit_error(root, tmp_path, capsys)
    assert "Class folders differ between train and test" in err
    assert (
        "('aps\\xe9' and 'apse\\u0301' differ only in how accented letters are written, Unicode NFC and NFD; "
        "give the folders one form, e.g. convmv -f utf-8 -t utf-8 --nfc -r --notest DIR)" in err
    )


@pytest.mark.parametrize("twin", ["Dome", unicodedata.normalize("NFD", "dôme")])
def test_class_folders_whose_names_look_alike_are_two_classes_with_a_warning(tmp_path, capsys, twin):
    """dome/ and Dome/ (or dôme/ written in NFC and in NFD) are two folders on Linux but one on macOS: legitimate
    here, most often a mistake, so the scan keeps both classes and names them in a warning (it used to say
    nothing)."""
    alike = "dome" if twin == "Dome" else unicodedata.normalize("NFC", "dôme")
    classes = tuple(sorted((twin, alike, "apse")))
    root = noise_folder(tmp_path, classes=classes, per_class=4, splits=("train", "test"))
    splits = data.build_splits(DataConfig(source=str(root), image_size=32))
    assert splits.class_names == classes
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    pair = " and ".join(ascii(name) for name in classes if name != "apse")
    assert warnings == [f"warning: class folders {pair} in {root / 'train'} differ only in letter case or in how "
                        "accented letters are written (Unicode NFC, NFD): they are 2 classes here, but one folder "
                        "on macOS; if they hold one class, merge them"]
    shutil.rmtree(root / "train" / twin)
    shutil.rmtree(root / "test" / twin)
    class_folders.scan_image_folder(root)
    assert "warning" not in capsys.readouterr().err
