"""CoAtNet: the same function as timm's, layer names pinned to timm module paths, sizes and errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table  # noqa: E402

from ich_keras import models, parity  # noqa: E402
from ich_keras._keras_compat import deferred_initializers  # noqa: E402
from ich_keras.convert import convert  # noqa: E402
from ich_keras.convert.by_name import _plan  # noqa: E402
from ich_keras.convert.rel_pos import resize_rel_pos_table  # noqa: E402
from ich_keras.models import coatnet  # noqa: E402
from ich_keras.models.layers import RelPosAttention  # noqa: E402

pytestmark = pytest.mark.timm
TIMM_VARIANTS = [name for name, v in coatnet.VARIANTS.items() if v.timm_name]


def _timm_weight_count(model: torch.nn.Module) -> int:
    """timm's parameters plus BatchNorm running statistics, which Keras counts as weights."""
    buffers = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return sum(p.numel() for p in model.parameters()) + buffers


def _assert_parity(result: dict) -> None:
    assert result["max_abs_diff"] <= 1e-4 * result["max_abs_reference"], result
    assert result["top1_agreement"] == 1.0, result


def _converted_pair(name: str, image_size: int, source_size: int | None = None, num_classes: int = 10):
    """A random timm model (at `source_size`, default `image_size`) and our conversion of its state dict."""
    source = parity.timm_model(name, num_classes, source_size or image_size)
    state_dict = parity.random_state_dict(source)
    timm_model = parity.timm_model(name, num_classes, image_size, state_dict)
    model, head_loaded = convert(name, state_dict, image_size=image_size)
    assert head_loaded
    return model, timm_model


@pytest.mark.parametrize("name", ["coatnet_tiny", "test_coatnet", "coatnet_pico_rw_224", "coatnet_nano_rw_224",
                                  "coatnet_bn_0_rw_224"])
def test_small_variants_match_timm_at_64px(name):
    model, timm_model = _converted_pair(name, 64)
    _assert_parity(parity.compare(model, timm_model, 64))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coatnet_0_rw_224", "coatnet_2_rw_224"])
def test_matches_timm_at_224px(name):
    model, timm_model = _converted_pair(name, 224, num_classes=1000)
    _assert_parity(parity.compare(model, timm_model, 224))


@pytest.mark.slow
def test_coatnet_0_at_64px_matches_timm_loading_the_224px_checkpoint():
    # timm resizes the position-bias tables of a 224 checkpoint in `checkpoint_filter_fn`; we must do the same.
    model, timm_model = _converted_pair("coatnet_0_rw_224", 64, source_size=224, num_classes=1000)
    tables = [layer.relative_position_bias_table.shape for layer in model.layers if isinstance(layer, RelPosAttention)]
    assert tables[0] == (49, 6) and tables[-1] == (9, 24)  # 192 and 768 input channels in heads of 32
    _assert_parity(parity.compare(model, timm_model, 64))


@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_weight_count_equals_timm(name):
    # Shapes only: neither side runs its initializers (timm's tensors live on the meta device).
    with torch.device("meta"):
        timm_model = timm.create_model(coatnet.VARIANTS[name].timm_name, pretrained=False, num_classes=1000)
    image_size = timm_model.pretrained_cfg["input_size"][-1]
    with deferred_initializers():
        model = models.build(name, 1000, image_size)
    assert model.count_params() == _timm_weight_count(timm_model)


@pytest.mark.slow  # 8 s: builds coatnet_0_rw_224 and timm's
def test_layer_names_are_timm_module_paths():
    model = models.build("coatnet_0_rw_224", 1000, 64)
    timm_keys = set(parity.random_state_dict(timm.create_model("coatnet_0_rw_224", pretrained=False)))
    assert {key for _, key, _ in _plan(model, ())} == timm_keys
    # Pinned by hand too, so a rename on both sides is noticed.
    for layer_name in ["stem.conv1", "stem.norm1", "stages.0.blocks.0.se_early.fc1", "stages.0.blocks.0.down.pool",
                       "stages.2.blocks.0.norm1.norm", "stages.2.blocks.0.attn.qkv", "stages.2.blocks.0.attn.rel_pos",
                       "stages.3.blocks.1.mlp.fc2", "norm", "head.fc"]:
        model.get_layer(layer_name)


@pytest.mark.parametrize("image_size, rows", [(224, (729, 169)), (64, (49, 9)), (96, (121, 25))])
def test_position_tables_follow_the_feature_map(image_size, rows):
    model = models.build("coatnet_tiny", 3, image_size)
    tables = [layer.relative_position_bias_table.shape[0] for layer in model.layers
              if isinstance(layer, RelPosAttention)]
    assert (tables[0], tables[-1]) == rows
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("image_size", [48, 100, 16])
def test_image_size_not_a_multiple_of_32_is_an_error(image_size):
    with pytest.raises(ValueError, match=f"multiple of 32.*image_size={image_size}"):
        models.build("coatnet_tiny", 10, image_size)


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match="Unknown model 'coatnet_9'.*coatnet_0_rw_224.*resnet50"):
        models.build("coatnet_9", 10, 64)


@pytest.mark.parametrize("source, target", [(14, 4), (7, 2), (7, 12), (4, 4)])
def test_table_resize_equals_timm(source, target):
    table = np.random.default_rng(0).normal(size=((2 * source - 1) ** 2, 3)).astype(np.float32)
    expected = resize_rel_pos_bias_table(
        torch.from_numpy(table), new_window_size=(target, target), new_bias_shape=((2 * target - 1) ** 2, 3)
    ).numpy()
    np.testing.assert_allclose(resize_rel_pos_table(table, target), expected, atol=1e-5)


def test_initialisation_is_independent_per_layer_and_seeded():
    import keras

    keras.utils.set_random_seed(0)
    first = models.build("coatnet_tiny", 3, 32)
    # Two squeeze-excite convs of the same shape (64 -> 16) must not start equal.
    same_shape = [layer.kernel.numpy() for layer in first.layers if layer.name.endswith("se_early.fc1")]
    assert same_shape[0].shape == same_shape[1].shape
    assert not np.allclose(same_shape[0], same_shape[1])
    keras.utils.set_random_seed(0)
    second = models.build("coatnet_tiny", 3, 32)
    for x, y in zip(first.weights, second.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_initial_kernels_spread_as_timms():
    # From scratch, each conv and linear kernel starts at timm's scale: He fan-out in the MBConv blocks, Xavier in
    # the transformer blocks, their downsampling shortcuts included. The head is ours (Glorot, zero bias) and is
    # left out. Kernels of 4096 values or more, so that each std is estimated within ~2 %.
    import keras
    import timm
    import torch

    torch.manual_seed(0)
    keras.utils.set_random_seed(0)
    reference = timm.create_model("coatnet_0_rw_224", pretrained=False, num_classes=10)
    spread = {name.removesuffix(".weight"): p.detach().std().item() for name, p in reference.named_parameters()
              if name.endswith(".weight") and p.ndim >= 2 and p.numel() >= 4096 and not name.startswith("head.")}
    ours = {layer.name: float(np.std(layer.kernel.numpy()))
            for layer in models.build("coatnet_0_rw_224", 10, 64).layers if layer.name in spread}
    assert ours.keys() == spread.keys()
    ratios = {name: round(ours[name] / spread[name], 3) for name in spread}
    assert {name: r for name, r in ratios.items() if abs(r - 1) > 0.05} == {}
