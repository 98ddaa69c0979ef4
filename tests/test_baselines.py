"""Baselines: parameter counts against timm, the converter's bookkeeping, and logit parity with timm at 224 px.

Run: python -m pytest tests/test_baselines.py          (full-size models carry the `slow` marker;
`-m 'not slow'` runs the quick ones)
"""

import ich_keras  # noqa: F401  (sets the JAX backend: must come before keras)

# isort: split
import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from ich_keras._keras_compat import deferred_initializers  # noqa: E402
from ich_keras.convert import baselines as convert  # noqa: E402
from ich_keras.convert import convert as convert_checkpoint  # noqa: E402
from ich_keras.convert.tracking import TrackedStateDict  # noqa: E402
from ich_keras.models import baselines  # noqa: E402

pytestmark = pytest.mark.timm
NAMES = sorted(baselines.BASELINES)
# Keras counts timm's parameters plus BatchNorm running mean/variance (non-trainable weights in Keras).
EXPECTED_PARAMS = {"resnet50": 25_610_152, "densenet121": 8_062_504, "vit_base_patch16_224": 86_567_656}


def timm_state_dict(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A random-init timm model's state dict as numpy, with every constant-initialised tensor randomised.

    timm initialises BatchNorm stats to 0 / 1, norms to 1 / 0, biases to 0 and ResNet's last BN gamma of each
    block to 0 (zero_init_last), so its residual branches are silent. A converter that swapped or dropped such a
    tensor would still give matching logits; random values make every tensor count.
    """
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    rng = np.random.default_rng(seed)
    out = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = tensor.numpy().copy()
        if key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, value.shape)
        elif value.size > 1 and value.std() == 0:
            value = value + 0.1 * rng.standard_normal(value.shape)
        out[key] = value.astype(np.float32)
    return out


def timm_logits(name: str, state_dict: dict[str, np.ndarray], images_nhwc: np.ndarray) -> np.ndarray:
    model = timm.create_model(name, pretrained=False).eval()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False
    )
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    with torch.no_grad():
        return model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("name", NAMES)
def test_param_count_equals_timm(name):
    # Shapes only: neither side runs its initializers (timm's tensors live on the meta device).
    with deferred_initializers():
        ours = baselines.BASELINES[name].build(1000, 224).count_params()
    with torch.device("meta"):
        timm_model = timm.create_model(name, pretrained=False)
    # timm's parameters plus its BatchNorm running stats (buffers other than num_batches_tracked).
    timm_count = sum(p.numel() for p in timm_model.parameters()) + sum(
        b.numel() for key, b in timm_model.named_buffers() if key.endswith(("running_mean", "running_var"))
    )
    assert ours == timm_count == EXPECTED_PARAMS[name]


def test_build_names_head_and_backbone():
    model = baselines.BASELINES["densenet121"].build(7, 32)
    assert model.get_layer(baselines.HEAD_NAME).kernel.shape == (1024, 7)
    assert model.get_layer(baselines.BACKBONE_NAME).output.shape == (None, 1, 1, 1024)
    assert model.output.shape == (None, 7)  # symbolic: the parity tests run the forward pass


def test_image_sizes_a_baseline_cannot_take_and_a_head_of_no_classes_are_user_errors():
    from ich_keras import models
    from ich_keras.errors import UserError

    with pytest.raises(UserError, match=r"multiple of its 16-pixel patches.*image_size=100"):
        models.build("vit_base_patch16_224", 10, 100)
    with pytest.raises(UserError, match=r"num_classes must be >= 1.*num_classes=0"):
        models.build("resnet50", 0, 32)
    with pytest.raises(UserError, match=r"DenseNet-121 needs an image size of at least 32.*image_size=16"):
        models.build("densenet121", 10, 16)


def test_normalisation_is_timms():
    for name in NAMES:
        cfg = timm.create_model(name, pretrained=False).pretrained_cfg
        entry = baselines.BASELINES[name]
        assert (entry.mean, entry.std) == (tuple(cfg["mean"]), tuple(cfg["std"])), name


def test_tracked_state_dict_reports_unused_and_unset():
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    sd = TrackedStateDict({"w": np.ones((3, 2), "float32"), "extra": np.zeros(1, "float32")})
    sd.assign(layer.kernel, "w", np.transpose)
    with pytest.raises(ValueError, match=r"extra.*bias"):
        sd.check_complete(layer.weights)
    with pytest.raises(ValueError, match="set twice"):
        sd.assign(layer.kernel, "w", np.transpose)
    with pytest.raises(ValueError, match="Shape mismatch"):
        sd.assign(layer.bias, "w")


def test_assign_rejects_leftover_keys():
    # The smallest baseline; an extra key (a typo, another variant) must not pass silently.
    model = baselines.BASELINES["densenet121"].build(1000, 32)
    state_dict = timm_state_dict("densenet121")
    state_dict["features.norm6.weight"] = np.ones(1024, "float32")
    with pytest.raises(ValueError, match=r"features\.norm6\.weight"):
        convert.assign(model, state_dict, "densenet121")


def test_assign_without_head_keeps_fresh_head():
    model = baselines.BASELINES["densenet121"].build(5, 32)
    head = model.get_layer(baselines.HEAD_NAME)
    before = [np.array(w.value) for w in head.weights]
    state_dict = timm_state_dict("densenet121")
    convert.assign(model, state_dict, "densenet121", load_head=False)
    for fresh, now in zip(before, head.weights):
        np.testing.assert_array_equal(fresh, np.array(now.value))
    gamma = model.get_layer(baselines.BACKBONE_NAME).get_layer("bn").gamma
    np.testing.assert_array_equal(np.array(gamma.value), state_dict["features.norm5.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_timm(name):
    state_dict = timm_state_dict(name)
    model, head_loaded = convert_checkpoint(name, state_dict, image_size=224)  # as the converter CLI builds it
    assert head_loaded
    images = np.random.default_rng(1).standard_normal((2, 224, 224, 3)).astype(np.float32)

    ours = model.predict_on_batch(images)  # one compiled program (a plain call runs layer by layer)
    theirs = timm_logits(name, state_dict, images)

    max_diff, scale = np.abs(ours - theirs).max(), np.abs(theirs).max()
    print(f"{name}: max|dlogit| {max_diff:.3g}, max|logit| {scale:.3g}, rel {max_diff / scale:.3g}")
    assert max_diff <= 1e-4 * scale
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize(("source", "target"), [(14, 4), (14, 2), (14, 24), (7, 9), (14, 1)])
def test_position_embeddings_resample_as_timm_loads_them(source, target):
    from timm.layers.pos_embed import resample_abs_pos_embed

    from ich_keras.convert.pos_embed import resample_abs_pos_embed as ours

    pos_embed = np.random.default_rng(source * target).normal(size=(1, 1 + source * source, 8)).astype(np.float32)
    expected = resample_abs_pos_embed(torch.from_numpy(pos_embed), [target, target]).numpy()
    np.testing.assert_allclose(ours(pos_embed, target), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert ours(pos_embed, source) is pos_embed


def test_vit_weights_of_224_px_convert_to_64_px_as_timm_resizes_them():
    from ich_keras import parity

    state_dict = timm_state_dict("vit_base_patch16_224")
    model, head_loaded = convert_checkpoint("vit_base_patch16_224", state_dict, image_size=64)
    assert head_loaded
    embedding = model.get_layer(baselines.BACKBONE_NAME).get_layer("vit_patching_and_embedding")
    assert [w.shape for w in embedding.weights if "position_embedding" in w.path] == [(17, 768)]  # 1 + 4 x 4 patches
    images = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
    reference = parity.timm_model("vit_base_patch16_224", 1000, 64, state_dict)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    ours = model.predict_on_batch(images)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
