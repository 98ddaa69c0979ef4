"""A soup's W0 of another image size than its ingredients (a run fine-tuned at 64 px from a 32 px `model.init`):
the soups resize it as fit resized the init (`init_weights.resized_to`, `merges.pretrained_weights`), and every
other size difference stays an error.

The reference W0 is resized by hand here, table by table with the converter's `resize_rel_pos_table`, and saved at
the ingredients' size: a method from the 32 px file must give what it gives from that file."""

import json
import math

import numpy as np
import pytest
from safety_fixtures import make_run
from soup_fixtures import sane

from ich_keras import models, soup
from ich_keras.convert.rel_pos import resize_rel_pos_table
from ich_keras.errors import UserError
from ich_keras.init_weights import resized_to, save_model_weights
from ich_keras.soups import read
from ich_keras.soups.monosoup import monosoup
from ich_keras.soups.task_vectors import task_arithmetic, ties
from ich_keras.weight_files import H5Source, ModelSource

CLASSES = 10


def _save(size: int, seed: int, path, classes: int = CLASSES):
    save_model_weights(sane(models.build("coatnet_tiny", classes, size), seed), path)
    return path


def _resized_by_hand(path, size: int, classes: int, out):
    """The file `path` at `size` px: each array whose shape differs from the model's but for the class axis is a
    relative-position table, resized with the converter's function; the rest copied. Saved to `out`."""
    model = models.build("coatnet_tiny", classes, size)
    values = read(H5Source(path)).to_dict()
    for key, variable in ModelSource(model).pairs:
        value = values[key]
        if value.shape != tuple(variable.shape):
            rows = variable.shape[0]  # (2t-1)^2 for a t x t map
            value = resize_rel_pos_table(value, (math.isqrt(rows) + 1) // 2)
        variable.assign(value)
    return save_model_weights(model, out)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """W0 at 32 px (10 and 5 classes), three 64 px fine-tunes, and each W0 resized by hand to 64 px."""
    folder = tmp_path_factory.mktemp("w0_size")
    w0 = _save(32, 7, folder / "w0_32.weights.h5")
    w0_5 = _save(32, 8, folder / "w0_32_5classes.weights.h5", classes=5)
    return {
        "w0": w0, "w0_5": w0_5,
        "ingredients": [_save(64, seed, folder / f"epoch_{seed:03d}.weights.h5") for seed in (1, 2, 3)],
        "reference": _resized_by_hand(w0, 64, CLASSES, folder / "w0_64_by_hand.weights.h5"),
        "reference_5": _resized_by_hand(w0_5, 64, 5, folder / "w0_64_5classes_by_hand.weights.h5"),
    }


def _target():
    return models.build("coatnet_tiny", CLASSES, 64)


def _assert_same(a, b):
    assert a.layout.by_key.keys() == b.layout.by_key.keys()
    for key in a.layout.by_key:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_w0_of_another_image_size_is_resized_as_the_converter_resizes_it(files):
    w0, notes = resized_to(_target(), files["w0"])
    assert notes == ["1 relative-position table resized from a 2x2 to a 4x4 feature map",
                     "1 relative-position table resized from a 1x1 to a 2x2 feature map"]
    assert w0.name == str(files["w0"])  # errors still name the file
    _assert_same(read(w0), read(H5Source(files["reference"])))
    # a W0 of the ingredients' size is the file itself, streamed as before
    same, none = resized_to(_target(), files["reference"])
    assert isinstance(same, H5Source) and none == []


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_a_merge_from_a_w0_of_another_image_size_equals_the_merge_from_it_resized_by_hand(files, method):
    merge = {"task_arithmetic": lambda w0: task_arithmetic(files["ingredients"], w0, lam=0.7),
             "ties": lambda w0: ties(files["ingredients"], w0, density=0.5, lam=1.0)}[method]
    w0, _ = resized_to(_target(), files["w0"])
    soup_from_32, report = merge(w0)
    reference, reference_report = merge(files["reference"])
    _assert_same(soup_from_32, reference)
    assert report["new_head"] == reference_report["new_head"] == []


def test_a_w0_of_another_image_size_and_class_count_keeps_the_head_rule(files):
    w0, notes = resized_to(_target(), files["w0_5"])
    assert len(notes) == 2  # the tables resized; the 5-class head left as in the file
    soup_from_32, report = task_arithmetic(files["ingredients"], w0, lam=0.7)
    reference, reference_report = task_arithmetic(files["ingredients"], files["reference_5"], lam=0.7)
    _assert_same(soup_from_32, reference)
    assert len(report["new_head"]) == 2 and report["new_head"] == reference_report["new_head"]  # kernel, bias


def test_monosoup_from_a_w0_of_another_image_size_equals_monosoup_from_it_resized_by_hand(files):
    w0, _ = resized_to(_target(), files["w0_5"])
    weights, report = monosoup(w0, files["ingredients"][0])
    reference, reference_report = monosoup(files["reference_5"], files["ingredients"][0])
    _assert_same(weights, reference)
    assert report["no_pretrained_counterpart"] == reference_report["no_pretrained_counterpart"] != []
    # Without a model to resize to (monosoup --no-eval without a run), W0 is used as it is: another image size
    # is an error
    with pytest.raises(UserError, match="another image size.*monosoup --no-eval"):
        monosoup(files["w0"], files["ingredients"][0])


def test_ingredients_of_two_image_sizes_are_still_refused(files, tmp_path):
    at_32 = _save(32, 4, tmp_path / "epoch_004.weights.h5")
    w0, _ = resized_to(_target(), files["w0"])
    with pytest.raises(UserError, match="has shape"):
        task_arithmetic([*files["ingredients"], at_32], w0)
    with pytest.raises(UserError, match="has shape"):
        ties([files["ingredients"][0], at_32], w0)


def test_soup_cook_and_monosoup_use_a_model_init_of_another_image_size_resized(tmp_path, capsys):
    # make_run's run is at 32 px; its model.init a 64 px file (the run started from it resized)
    run = make_run(tmp_path / "run")
    w0 = _save(64, 9, tmp_path / "w0_64.weights.h5")
    config = json.loads((run / "config.json").read_text())
    config["model"]["init"] = str(w0)
    (run / "config.json").write_text(json.dumps(config))
    soup.main([str(run), "--uniform", "--task-arithmetic", "--interpolate", "--alphas", "0", "1", "--quiet"])
    printed = capsys.readouterr().out
    notes = "1 relative-position table resized from a 4x4 to a 2x2 feature map"
    assert f"W0 {w0}: {notes}" in printed and printed.count(f"W0 {w0}:") == 1  # once per command
    folder = run / "soups" / "task_arithmetic"
    record = json.loads((folder / "provenance.json").read_text())
    assert record["pretrained"]["path"] == w0.resolve().as_posix() and len(record["pretrained"]["sha256"]) == 64
    assert record["pretrained"]["resized"][0] == notes
    results = json.loads((folder / "results.json").read_text())
    assert results["provenance"]["pretrained"]["resized"] == record["pretrained"]["resized"]
    assert f"W0 `{w0.resolve().as_posix()}` (sha256 {record['pretrained']['sha256'][:12]}, {notes}" in \
        (folder / "results.md").read_text()
    assert [point["alpha"] for point in results["interpolation"]] == [0.0, 1.0]
    # the uniform soup used W0 for its WiSE-FT curve only: its provenance names W0 too
    assert json.loads((run / "soups/uniform/provenance.json").read_text())["pretrained"] == record["pretrained"]
    # the soup is task arithmetic from W0 resized by hand
    reference_w0 = _resized_by_hand(w0, 32, CLASSES, tmp_path / "w0_32_by_hand.weights.h5")
    kept = sorted((run / "checkpoints").glob("*.weights.h5"))
    reference, _ = task_arithmetic(kept, reference_w0)
    _assert_same(read(H5Source(folder / "soup.weights.h5")), reference)
    # MonoSoup with the run resizes its --pretrained the same way
    soup.main(["monosoup", str(run), "--pretrained", str(w0), "--finetuned", str(kept[0]), "--quiet"])
    assert f"W0 {w0}: {notes}" in capsys.readouterr().out
    folder = run / "soups" / "monosoup_variance"
    assert json.loads((folder / "provenance.json").read_text())["pretrained"]["resized"][0] == notes
    _assert_same(read(H5Source(folder / "soup.weights.h5")), monosoup(reference_w0, kept[0])[0])
    # Without RUN_DIR, the run W1 was kept in stands for it (it printed: Pass a run directory or --config)
    (folder / "soup.weights.h5").unlink()
    soup.main(["monosoup", "--pretrained", str(w0), "--finetuned", str(kept[0]), "--quiet"])
    assert f"W0 {w0}: {notes}" in capsys.readouterr().out
    _assert_same(read(H5Source(folder / "soup.weights.h5")), monosoup(reference_w0, kept[0])[0])
    # --no-eval: the run gives the model to resize W0 to, and its data is not read (here: not there at all)
    config["data"]["source"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path / "unscored" / "monosoup_variance"
    soup.main(["monosoup", str(run), "--pretrained", str(w0), "--finetuned", str(kept[0]), "--no-eval", "--quiet",
               "--output", str(out.parent)])
    assert f"W0 {w0}: {notes}" in capsys.readouterr().out
    _assert_same(read(H5Source(out / "soup.weights.h5")), monosoup(reference_w0, kept[0])[0])
    assert "test" not in json.loads((out / "results.json").read_text()) and not (out / "results.md").exists()
