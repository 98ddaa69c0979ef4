"""The converter's parts on their own: the parity fixture, ViT position embeddings, timm files given as weights."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
import safetensors.torch  # noqa: E402

from ich_keras import models, parity  # noqa: E402
from ich_keras.convert import convert  # noqa: E402
from ich_keras.convert.pos_embed import resample_abs_pos_embed  # noqa: E402
from ich_keras.errors import UserError  # noqa: E402
from ich_keras.init_weights import build_with_weights, load_weights  # noqa: E402

pytestmark = pytest.mark.timm


def test_random_state_dict_leaves_no_tensor_constant():
    # timm initialises norms to 1 / 0 and biases to 0: a parity test on those values cannot see a norm or bias
    # converted into the wrong place (the README's parity claim, "a dropped or misplaced tensor shows").
    state_dict = parity.random_state_dict(parity.timm_model("test_coatnet", 10, 64))
    constant = [k for k, v in state_dict.items() if v.size > 1 and v.std() == 0]
    assert constant == []


def test_a_timm_models_own_state_dict_converts_as_it_is():
    # The notebook route: convert(name, timm_model.state_dict()), torch tensors and BatchNorm step counters
    # (num_batches_tracked) included. The counters were "tensors with no place", a wrong-architecture error.
    name, size = "test_coatnet", 64
    reference = parity.timm_model(name, 10, size)
    assert any(key.endswith("num_batches_tracked") for key in reference.state_dict())
    model, head_loaded = convert(name, reference.state_dict(), image_size=size)
    assert head_loaded and parity.disagreement(parity.compare(model, reference, size)) is None


def test_parity_sees_a_misplaced_norm():
    # The two norms of one transformer block swapped: with timm's 1 / 0 init both models would still agree.
    name, size = "test_coatnet", 64
    state_dict = parity.random_state_dict(parity.timm_model(name, 10, size))
    swapped = dict(state_dict)
    for p in ("weight", "bias"):
        a, b = f"stages.2.blocks.1.norm1.{p}", f"stages.2.blocks.1.norm2.{p}"
        swapped[a], swapped[b] = state_dict[b], state_dict[a]
    model, _ = convert(name, swapped, image_size=size)
    result = parity.compare(model, parity.timm_model(name, 10, size, state_dict), size)
    assert result["max_abs_diff"] > 1e-3 * result["max_abs_reference"]


def test_parity_disagreement_names_what_falls_short():
    # The bar --check and the GPU check apply: relative error <= 1e-4 (NaN fails) and, for logits, identical top-1.
    assert parity.disagreement({"relative_error": 1e-4, "top1_agreement": 1.0}) is None
    assert parity.disagreement({"relative_error": 0.5}) == "relative error 5.00e-01 > tolerance 0.0001"
    assert parity.disagreement({"relative_error": float("nan")}) == "relative error nan > tolerance 0.0001"
    assert parity.disagreement({"relative_error": 1e-6, "top1_agreement": 0.75}) == "top-1 agreement 75% < 100%"


def test_compare_counts_two_outputs_of_zeros_as_equal():
    # max |diff| / max |reference| was 0/0 = NaN for a model whose logits are all zeros (a head of zeros), and
    # disagreement() fails NaN: equal outputs failed the check. Any difference from zeros stays a failure.
    import keras

    inputs = keras.Input((8, 8, 3))
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)).eval()
    with torch.no_grad():
        reference[1].weight.zero_()
        reference[1].bias.zero_()
    for fill, relative in ((0.0, 0.0), (1.0, float("inf"))):
        ours = keras.Model(inputs, keras.layers.Lambda(lambda x, v=fill: keras.ops.full((3,), v) + 0 * x[:, 0, 0, :])(
            inputs))
        result = parity.compare(ours, reference, 8)
        assert result["relative_error"] == relative, result
        assert (parity.disagreement(result) is None) == (relative == 0.0)


def test_position_embedding_without_a_square_grid_is_a_user_error():
    # 1 class token + 1 distillation token + 14 x 14 patches: not ours, and numpy cannot reshape it.
    pos_embed = np.zeros((1, 2 + 14 * 14, 8), "float32")
    with pytest.raises(UserError, match=r"pos_embed.*\(1, 198, 8\)"):
        resample_abs_pos_embed(pos_embed, 4)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pth.tar"])
def test_a_timm_checkpoint_as_init_says_to_convert_it(tmp_path, suffix):
    # model.init = the downloaded timm file instead of its conversion: "file signature not found" said nothing useful.
    path = tmp_path / f"model{suffix}"
    tensors = {"stem.conv1.weight": torch.zeros(2, 3, 3, 3)}
    if suffix == ".safetensors":
        safetensors.torch.save_file(tensors, path)
    else:
        torch.save(tensors, path)
    with pytest.raises(UserError, match=rf"a timm / torch checkpoint.*python -m ich_keras.convert --model "
                                        rf"test_coatnet.*path='.*model{suffix}'"):
        build_with_weights(lambda: models.build("test_coatnet", 3, 32), path)
    with pytest.raises(UserError, match="python -m ich_keras.convert"):
        load_weights(models.build("test_coatnet", 3, 32), path)


_WRAPPERS = {
    "data_parallel": torch.nn.DataParallel,  # "module.<name>", as DDP names them too
    "compiled": torch.compile,  # "_orig_mod.<name>"; compiling waits for the first call, which never comes
    "compiled_data_parallel": lambda m: torch.compile(torch.nn.DataParallel(m)),  # "_orig_mod.module.<name>"
}


@pytest.mark.parametrize("wrapper, file_name", [("data_parallel", "ddp.pth"), ("compiled", "compiled.pth"),
                                                ("compiled_data_parallel", "model_best.pth.tar"),
                                                ("data_parallel", "ddp.safetensors")])
def test_a_state_dict_saved_from_inside_a_wrapper_loses_its_prefix(tmp_path, wrapper, file_name):
    # DataParallel / DDP name every tensor "module.<name>", torch.compile "_orig_mod.<name>"; timm's own loader strips
    # both, from any file. "_orig_mod." and a .safetensors "module." used to end as "no 'head.fc.weight'".
    from ich_keras.convert.checkpoint import load_state_dict

    model = parity.timm_model("test_coatnet", 3, 32)
    path = tmp_path / file_name
    wrapped = _WRAPPERS[wrapper](model).state_dict()
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(wrapped, path)
    else:
        torch.save({"state_dict": wrapped}, path)
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(k for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    np.testing.assert_array_equal(loaded["stem.conv1.weight"], model.state_dict()["stem.conv1.weight"].numpy())
