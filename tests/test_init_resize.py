"""An init of another image size (`ich_keras.init_weights.load_weights`): CoAtNet's relative-position tables and
ViT's position embedding are resized as the converter and timm resize them, every other array is loaded as it is,
and weights used as themselves (`new_head=False`: a run's checkpoint, a soup to predict with) are refused."""

import dataclasses
import json
import math
import re

import h5py
import numpy as np
import pytest

from ich_keras import models
from ich_keras.convert.pos_embed import resample_abs_pos_embed
from ich_keras.convert.rel_pos import resize_rel_pos_table
from ich_keras.errors import UserError
from ich_keras.init_weights import build_with_weights, load_weights, save_model_weights
from ich_keras.weight_files import ModelSource
from soup_fixtures import randomize


def _file_arrays(path) -> dict[str, np.ndarray]:
    """Every dataset of a `.weights.h5`, by path: the reference, read without the loader."""
    arrays = {}
    with h5py.File(path) as f:
        f.visititems(lambda key, item: arrays.update({key: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return arrays


def _model_arrays(model) -> dict[str, tuple[str, np.ndarray]]:
    """{file key: (variable path, value)} of a model."""
    return {key: (variable.path, np.asarray(variable.numpy())) for key, variable in ModelSource(model).pairs}


def _tiny_vit(image_size: int, num_classes: int = 3):
    """`vit_base_patch16_224` as the registry builds it (keras-hub ViTBackbone, class-token head), one block of
    width 8."""
    from keras_hub.models import ViTBackbone

    from ich_keras.models.baselines import BACKBONE_NAME, BASELINES

    def backbone(size):
        return ViTBackbone(image_shape=(size, size, 3), patch_size=16, num_layers=1, num_heads=2, hidden_dim=8,
                           mlp_dim=16, name=BACKBONE_NAME)

    return dataclasses.replace(BASELINES["vit_base_patch16_224"], backbone=backbone).build(num_classes, image_size)


@pytest.fixture(scope="module")
def coatnet_at_32(tmp_path_factory):
    """A random coatnet_tiny at 32 px (2x2 and 1x1 maps in the transformer stages), saved as a fit checkpoint."""
    path = tmp_path_factory.mktemp("at32") / "epoch_001.weights.h5"
    save_model_weights(randomize(models.build("coatnet_tiny", 10, 32), seed=7), path)
    return path


def test_a_coatnet_file_of_another_image_size_loads_with_its_tables_resized_as_the_converter_does(coatnet_at_32,
                                                                                                   capsys):
    model = models.build("coatnet_tiny", 10, 64)
    assert load_weights(model, coatnet_at_32) == []  # the same class count: no head to re-initialise
    saved, tables = _file_arrays(coatnet_at_32), 0
    for key, (name, value) in _model_arrays(model).items():
        if name.endswith("relative_position_bias_table"):
            side = (math.isqrt(value.shape[0]) + 1) // 2  # ((2s-1)^2, heads) at 64 px: s = 4 and 2
            np.testing.assert_array_equal(value, resize_rel_pos_table(saved[key], side), err_msg=name)
            assert value.shape != saved[key].shape
            tables += 1
        else:
            np.testing.assert_array_equal(value, saved[key], err_msg=name)
    assert tables == 2  # coatnet_tiny's transformer blocks: one at 1/16 of the image, one at 1/32
    out = capsys.readouterr().out
    assert f"Loaded {coatnet_at_32}; " in out
    assert "1 relative-position table resized from a 2x2 to a 4x4 feature map" in out
    assert "1 relative-position table resized from a 1x1 to a 2x2 feature map" in out


def test_weights_used_as_themselves_are_refused_at_another_image_size_naming_the_table(coatnet_at_32):
    model = models.build("coatnet_tiny", 10, 64)
    with pytest.raises(UserError) as error:
        load_weights(model, coatnet_at_32, new_head=False)
    message = str(error.value)
    assert "stages.2.blocks.0.attn.rel_pos/relative_position_bias_table is (9, 1) in the file, (49, 1)" in message
    assert "model.init" in message and "ich_keras.convert" not in message  # a fit checkpoint cannot be converted
    with pytest.raises(UserError, match="relative_position_bias_table"):  # build_with_weights passes it on
        build_with_weights(lambda: models.build("coatnet_tiny", 10, 64), coatnet_at_32, new_head=False)


def test_a_vit_file_of_another_image_size_loads_with_its_position_embedding_resampled(tmp_path, capsys):
    path = save_model_weights(randomize(_tiny_vit(32), seed=3), tmp_path / "vit32.weights.h5")  # a 2x2 patch grid
    model = _tiny_vit(64)
    assert load_weights(model, path) == []
    saved, embeddings = _file_arrays(path), 0
    for key, (name, value) in _model_arrays(model).items():
        if name.endswith("position_embedding/embeddings"):
            assert saved[key].shape == (1 + 2 * 2, 8) and value.shape == (1 + 4 * 4, 8)
            np.testing.assert_array_equal(value, resample_abs_pos_embed(saved[key][None], 4)[0])
            embeddings += 1
        else:
            np.testing.assert_array_equal(value, saved[key], err_msg=name)
    assert embeddings == 1
    assert "1 position embedding resized from a 2x2 to a 4x4 patch grid" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"position_embedding/embeddings is \(5, 8\) in the file.*model\.init"):
        load_weights(_tiny_vit(64), path, new_head=False)


@pytest.mark.timm
def test_an_init_at_another_size_equals_converting_at_that_size_and_matches_timm(tmp_path):
    pytest.importorskip("timm")
    from ich_keras import parity  # torch: imported only by the test that needs it
    from ich_keras.convert import convert

    state_dict = parity.random_state_dict(parity.timm_model("coatnet_tiny", 1000, 32))
    at_32, _ = convert("coatnet_tiny", state_dict, image_size=32)
    path = save_model_weights(at_32, tmp_path / "imagenet32.weights.h5")
    loaded = build_with_weights(lambda: models.build("coatnet_tiny", 1000, 64), path, verbose=False)
    converted, _ = convert("coatnet_tiny", state_dict, image_size=64)
    ours, reference = _model_arrays(loaded), _model_arrays(converted)
    for key, (name, value) in ours.items():
        np.testing.assert_array_equal(value, reference[key][1], err_msg=name)
    result = parity.compare(loaded, parity.timm_model("coatnet_tiny", 1000, 64, state_dict), 64)
    assert result["max_abs_diff"] <= 1e-4 * result["max_abs_reference"], result
    assert result["top1_agreement"] == 1.0, result


@pytest.mark.slow  # 12 s: two fits
def test_a_fit_checkpoint_at_32px_is_the_init_of_a_fit_at_64px(tmp_path, capsys):
    from logging_fixtures import tiny_config

    from ich_keras.train import run

    run(tiny_config(epochs=1), tmp_path / "at32")
    manifest = json.loads((tmp_path / "at32/checkpoints/manifest.json").read_text())
    best = tmp_path / "at32/checkpoints" / manifest["kept"][str(manifest["ranked"]["loss"][0])]
    # As if the first run had other classes at the same count: its head fits and is kept, which fit now says.
    classes = json.loads((tmp_path / "at32/classes.json").read_text())
    (tmp_path / "at32/classes.json").write_text(json.dumps([*classes[:-1], "renamed"]))
    capsys.readouterr()
    results = run(tiny_config(epochs=1, data={"image_size": 64}, model={"init": str(best)}), tmp_path / "at64")
    printed = capsys.readouterr().out
    assert "relative-position table resized from a 2x2 to a 4x4 feature map" in printed
    assert re.search(r"Note: model.init comes from a run of other classes \(.*at32: \[.*'renamed'\]\); its head has "
                     r"this run's class count and is kept", printed), printed
    history = (tmp_path / "at64/history.csv").read_text().splitlines()
    assert len(history) == 2
    assert np.isfinite(results["best"]["loss"]["test"]["loss"])
