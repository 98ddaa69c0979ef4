"""`python -m ich_keras.convert` end to end on real files: formats, head replacement, and each bad input."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
import safetensors.torch  # noqa: E402

from ich_keras import cli, models, parity  # noqa: E402
from ich_keras.convert import __main__ as convert_command  # noqa: E402
from ich_keras.convert.checkpoint import load_state_dict  # noqa: E402

pytestmark = pytest.mark.timm
ROOT = Path(__file__).resolve().parents[1]

NAME, SIZE = "test_coatnet", 64


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """A timm test_coatnet with non-trivial statistics, saved both as .safetensors and as .pth."""
    folder = tmp_path_factory.mktemp("timm")
    state_dict = parity.random_state_dict(parity.timm_model(NAME, 1000, SIZE))
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    safetensors.torch.save_file(tensors, folder / "model.safetensors")
    torch.save(tensors, folder / "model.pth")
    return folder, state_dict


@pytest.mark.parametrize("file_name", ["model.safetensors", "model.pth"])
def test_converted_file_loads_and_equals_timm(timm_checkpoint, tmp_path, file_name, capsys):
    folder, state_dict = timm_checkpoint
    out = tmp_path / "converted.weights.h5"
    argv = ["--model", NAME, "--checkpoint", str(folder / file_name), "--output", str(out), "--image-size", str(SIZE)]
    assert convert_command.main(argv) == 0
    assert f"Wrote {out}" in capsys.readouterr().out
    model = models.build(NAME, 1000, SIZE)
    model.load_weights(out)
    result = parity.compare(model, parity.timm_model(NAME, 1000, SIZE, state_dict), SIZE)
    assert result["max_abs_diff"] <= 1e-4 * result["max_abs_reference"] and result["top1_agreement"] == 1.0


def test_new_class_count_keeps_the_body_and_replaces_the_head(timm_checkpoint, tmp_path, capsys):
    folder, state_dict = timm_checkpoint
    out = tmp_path / "five.weights.h5"
    argv = ["--model", NAME, "--checkpoint", str(folder / "model.safetensors"), "--output", str(out),
            "--num-classes", "5", "--image-size", str(SIZE), "--check"]
    assert convert_command.main(argv) == 0
    printed = capsys.readouterr().out
    assert "head was dropped" in printed and '"compared": "pre-logits features"' in printed
    assert "top1_agreement" not in printed  # features have no classes to agree on
    model = models.build(NAME, 5, SIZE)
    model.load_weights(out)
    np.testing.assert_array_equal(model.get_layer("stem.conv1").kernel.numpy(),
                                  state_dict["stem.conv1.weight"].transpose(2, 3, 1, 0))
    assert model.get_layer("head.fc").kernel.shape == (128, 5)


def test_a_checkpoint_without_a_head_converts_with_a_new_one(timm_checkpoint, tmp_path, capsys):
    # timm's reset_classifier(0), or a self-supervised backbone: its body was refused as "another architecture?".
    folder, state_dict = timm_checkpoint
    headless = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file({k: torch.from_numpy(v) for k, v in state_dict.items() if not k.startswith("head.fc")},
                                headless)
    out = tmp_path / "three.weights.h5"
    argv = ["--model", NAME, "--checkpoint", str(headless), "--output", str(out), "--image-size", str(SIZE)]
    err = _run_expecting_error(argv, capsys)
    assert "has no 'head.fc.weight', the head of test_coatnet: give --num-classes N for a new head" in err
    assert convert_command.main([*argv, "--num-classes", "3", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "Note: the checkpoint has no head; the new 3-class head is freshly initialised" in printed
    assert '"compared": "pre-logits features"' in printed  # the body equals timm's without a head
    model = models.build(NAME, 3, SIZE)
    model.load_weights(out)
    np.testing.assert_array_equal(model.get_layer("stem.conv1").kernel.numpy(),
                                  state_dict["stem.conv1.weight"].transpose(2, 3, 1, 0))


def test_a_timm_training_checkpoint_converts_its_model_or_its_ema_weights(timm_checkpoint, tmp_path, capsys):
    # timm's train.py keeps model_best.pth.tar: the state dict beside the optimizer's, its EMA copy and its
    # arguments (an argparse.Namespace, which torch.load(weights_only=True) refused). Written here by timm's own saver.
    import argparse

    from timm.utils import CheckpointSaver, ModelEmaV3

    _, state_dict = timm_checkpoint
    model = parity.timm_model(NAME, 1000, SIZE, state_dict)
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for value in ema.module.state_dict().values():
            if value.is_floating_point():
                value.mul_(0.9)  # EMA weights that differ from the model's
    saver = CheckpointSaver(model, torch.optim.AdamW(model.parameters()), args=argparse.Namespace(model=NAME, lr=1e-3),
                            model_ema=ema, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path), decreasing=False)
    saver.save_checkpoint(epoch=0, metric=0.5)
    best = tmp_path / "model_best.pth.tar"
    for flags, reference in (([], model), (["--ema"], ema.module.eval())):
        out = tmp_path / f"best{''.join(flags)}.weights.h5"
        argv = ["--model", NAME, "--checkpoint", str(best), "--output", str(out), "--image-size", str(SIZE), *flags]
        assert convert_command.main(argv) == 0
        converted = models.build(NAME, 1000, SIZE)
        converted.load_weights(out)
        result = parity.compare(converted, reference, SIZE)
        assert result["max_abs_diff"] <= 1e-4 * result["max_abs_reference"] and result["top1_agreement"] == 1.0
    kernels = []
    for name in ("best.weights.h5", "best--ema.weights.h5"):
        converted = models.build(NAME, 1000, SIZE)
        converted.load_weights(tmp_path / name)
        kernels.append(converted.get_layer("stem.conv1").kernel.numpy())
    np.testing.assert_allclose(kernels[1], 0.9 * kernels[0], rtol=1e-6)  # the EMA copy, not the model twice

    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    err = _run_expecting_error(["--model", NAME, "--checkpoint", str(plain), "--ema", "--output",
                                str(tmp_path / "x.weights.h5")], capsys)
    assert f"{plain} holds no EMA weights (state_dict_ema or model_ema): convert it without --ema" in err


@pytest.mark.parametrize("key", ["state_dict_ema", "model_ema"])
def test_a_training_checkpoint_of_ema_weights_only_converts_them_and_says_so(timm_checkpoint, tmp_path, capsys, key):
    # A checkpoint stripped down to its EMA copy used to give those weights without --ema and without a word: a user
    # comparing "model" and "EMA" conversions would have compared the EMA weights with themselves.
    _, state_dict = timm_checkpoint
    ema_weights = {k: torch.from_numpy(0.9 * v if v.dtype == np.float32 else v) for k, v in state_dict.items()}
    checkpoint = tmp_path / "ema_only.pth.tar"
    torch.save({"epoch": 3, "arch": NAME, key: ema_weights}, checkpoint)
    out = tmp_path / "ema.weights.h5"
    argv = ["--model", NAME, "--checkpoint", str(checkpoint), "--output", str(out), "--image-size", str(SIZE)]
    assert convert_command.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Note: {checkpoint} holds only EMA weights ({key}), no model weights: those were converted" in printed
    converted = models.build(NAME, 1000, SIZE)
    converted.load_weights(out)
    np.testing.assert_allclose(converted.get_layer("stem.conv1").kernel.numpy(),
                               0.9 * state_dict["stem.conv1.weight"].transpose(2, 3, 1, 0), rtol=1e-6)
    # Asked for by --ema, they need no note.
    assert convert_command.main([*argv, "--ema", "--overwrite"]) == 0
    assert "holds only EMA weights" not in capsys.readouterr().out


def _run_expecting_error(argv, capsys) -> str:
    """The command's stderr; it must end as a user error (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(convert_command.main, argv)
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_checkpoint_of_another_architecture_lists_the_names(tmp_path, capsys):
    checkpoint = tmp_path / "resnet.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet18", pretrained=False).state_dict(), checkpoint)
    err = _run_expecting_error(
        ["--model", NAME, "--checkpoint", str(checkpoint), "--output", str(tmp_path / "x.weights.h5")], capsys
    )
    assert "no 'head.fc.weight'" in err and "conv1.weight" in err


def test_checkpoint_with_other_blocks_lists_unmatched_tensors(timm_checkpoint, tmp_path, capsys):
    folder, _ = timm_checkpoint
    err = _run_expecting_error(["--model", "coatnet_tiny", "--checkpoint", str(folder / "model.safetensors"),
                                "--output", str(tmp_path / "x.weights.h5")], capsys)
    assert "checkpoint tensors have no place in the model" in err and "stages.0.blocks.0.se.fc1.weight" in err
    assert "have no tensor in the checkpoint" in err and "stages.0.blocks.0.se_early.fc1.weight" in err


def test_truncated_safetensors_is_an_error_naming_the_file(timm_checkpoint, tmp_path, capsys):
    folder, _ = timm_checkpoint
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((folder / "model.safetensors").read_bytes()[:5000])
    err = _run_expecting_error(["--model", NAME, "--checkpoint", str(truncated),
                                "--output", str(tmp_path / "x.weights.h5")], capsys)
    assert f"{truncated} is not a readable safetensors checkpoint" in err


def test_non_checkpoint_file_is_an_error(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    err = _run_expecting_error(["--model", NAME, "--checkpoint", str(text),
                                "--output", str(tmp_path / "x.weights.h5")], capsys)
    assert f"{text} is not a readable torch checkpoint" in err


class _RunsCode:
    """Unpickled, it would run a command: what a malicious checkpoint holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_is_refused(tmp_path, capsys):
    # weights_only=True: a checkpoint that would run code when unpickled is refused, not loaded; the message names
    # what it holds and leaves out torch's advice to load it with weights_only=False.
    evil, marker = tmp_path / "evil.pth", tmp_path / "ran"
    torch.save({"stem.conv1.weight": torch.zeros(1), "hook": _RunsCode(marker)}, evil)
    err = _run_expecting_error(["--model", NAME, "--checkpoint", str(evil),
                                "--output", str(tmp_path / "x.weights.h5")], capsys)
    assert f"{evil} is not a readable torch checkpoint of weights only (UnpicklingError: " in err
    assert "GLOBAL posix.system" in err and "nothing in it was run" in err and "weights_only" not in err
    assert not marker.exists()


def test_unknown_model_and_bad_size_are_errors(timm_checkpoint, tmp_path, capsys):
    folder, _ = timm_checkpoint
    argv = ["--checkpoint", str(folder / "model.safetensors"), "--output", str(tmp_path / "x.weights.h5")]
    assert "Unknown model 'coatnet_7'" in _run_expecting_error(["--model", "coatnet_7", *argv], capsys)
    err = _run_expecting_error(["--model", NAME, "--image-size", "100", *argv], capsys)
    assert "Received: --image-size=100" in err
    # Named before the checkpoint is read: a missing one no longer hides the other mistakes.
    missing = ["--checkpoint", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "x.weights.h5")]
    assert "Unknown model 'coatnet_7'" in _run_expecting_error(["--model", "coatnet_7", *missing], capsys)
    assert not (tmp_path / "x.weights.h5").exists()


def test_bfloat16_safetensors_convert_as_the_same_weights_widened(timm_checkpoint, tmp_path):
    folder, state_dict = timm_checkpoint
    bf16 = {k: torch.from_numpy(v).to(torch.bfloat16) if v.dtype == np.float32 else torch.from_numpy(v)
            for k, v in state_dict.items()}
    safetensors.torch.save_file(bf16, tmp_path / "bf16.safetensors")
    torch.save(bf16, tmp_path / "bf16.pth")
    for name in ("bf16.safetensors", "bf16.pth"):
        argv = ["--model", NAME, "--checkpoint", str(tmp_path / name), "--output", str(tmp_path / f"{name}.weights.h5"),
                "--image-size", str(SIZE), "--check"]  # the check hands the same widened arrays to timm
        assert convert_command.main(argv) == 0
        assert {v.dtype for v in load_state_dict(tmp_path / name).values()} <= {np.dtype("float32"), np.dtype("int64")}
    from_safetensors, from_pth = models.build(NAME, 1000, SIZE), models.build(NAME, 1000, SIZE)
    from_safetensors.load_weights(tmp_path / "bf16.safetensors.weights.h5")
    from_pth.load_weights(tmp_path / "bf16.pth.weights.h5")
    for a, b in zip(from_safetensors.weights, from_pth.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    kernel = from_pth.get_layer("stem.conv1").kernel.numpy()
    np.testing.assert_array_equal(kernel, bf16["stem.conv1.weight"].float().numpy().transpose(2, 3, 1, 0))


def test_an_existing_output_is_replaced_only_with_overwrite(timm_checkpoint, tmp_path, capsys):
    folder, _ = timm_checkpoint
    out = tmp_path / "epoch_005.weights.h5"  # it could be a checkpoint of a run
    out.write_bytes(b"a file the user made")
    argv = ["--model", NAME, "--checkpoint", str(folder / "model.safetensors"), "--output", str(out),
            "--image-size", str(SIZE)]
    assert "The output exists; pass --overwrite" in _run_expecting_error(argv, capsys)
    assert out.read_bytes() == b"a file the user made"
    assert convert_command.main([*argv, "--overwrite"]) == 0
    models.build(NAME, 1000, SIZE).load_weights(out)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left beside it


def test_an_output_that_is_a_folder_is_never_replaced(timm_checkpoint, tmp_path, capsys):
    folder, _ = timm_checkpoint
    out = tmp_path / "weights.weights.h5"
    (out / "kept").mkdir(parents=True)
    # The error used to say "pass --overwrite" also to a command that had passed it (a folder is never replaced).
    err = _run_expecting_error(["--model", NAME, "--checkpoint", str(folder / "model.safetensors"), "--output",
                                str(out), "--image-size", str(SIZE), "--overwrite"], capsys)
    assert "The output is a folder" in err and "pass --overwrite" not in err and str(out) in err
    assert [p.name for p in out.iterdir()] == ["kept"]


def test_vit_checkpoint_of_another_variant_at_another_size_lists_the_tensors(tmp_path, capsys):
    # DeiT's distilled ViT has a second prefix token: its position embedding is not 1 + a square grid. Resampling it
    # for 64 px used to fail inside numpy ("cannot reshape array"), with a traceback and no tensor named.
    checkpoint = tmp_path / "deit.safetensors"
    safetensors.torch.save_file(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).state_dict(),
                                checkpoint)
    err = _run_expecting_error(["--model", "vit_base_patch16_224", "--checkpoint", str(checkpoint),
                                "--output", str(tmp_path / "x.weights.h5"), "--image-size", "64"], capsys)
    assert "does not fit vit_base_patch16_224" in err and "dist_token" in err and "head_dist.weight" in err


def test_a_baseline_checkpoint_of_a_deeper_variant_is_named_briefly(tmp_path, capsys):
    # resnet101 holds every resnet50 tensor plus 17 more blocks: the error used to list all 255 leftovers (6.7 kB).
    checkpoint = tmp_path / "resnet101.safetensors"
    safetensors.torch.save_file(timm.create_model("resnet101", pretrained=False).state_dict(), checkpoint)
    err = _run_expecting_error(["--model", "resnet50", "--checkpoint", str(checkpoint),
                                "--output", str(tmp_path / "x.weights.h5"), "--image-size", "32"], capsys)
    assert "does not fit resnet50" in err and "another architecture" in err
    assert "255 unused state-dict keys" in err and "(243 more)" in err and len(err) < 1500


def test_check_with_a_timm_that_lacks_the_model_names_the_version_to_install(timm_checkpoint, tmp_path, capsys,
                                                                               monkeypatch):
    # timm 1.0.29 (a GPU image's) has no test_coatnet: stand in for it by making this timm not know the model.
    folder, _ = timm_checkpoint
    monkeypatch.setattr(timm, "is_model", lambda name: name != NAME)
    out = tmp_path / "x.weights.h5"
    err = _run_expecting_error(["--model", NAME, "--checkpoint", str(folder / "model.safetensors"), "--output",
                                str(out), "--check"], capsys)
    assert f"timm {timm.__version__} has no model '{NAME}'" in err and "timm>=1.0.31" in err
    # The command failed, so it wrote nothing: the weights used to be written before the check, and the run again
    # after upgrading timm then stopped at "The output exists; pass --overwrite".
    assert list(tmp_path.iterdir()) == []


def test_a_check_that_fails_exits_1_naming_the_numbers_and_writes_nothing(timm_checkpoint, tmp_path, capsys):
    # --check printed its numbers and exited 0 however far apart they were. A real disagreement without a converter
    # bug: a head that multiplies a sum that is 0 in exact arithmetic (the channels of a LayerNorm output with one
    # scale and no shift) by 1e4, so each side's logits are its own float32 rounding, amplified.
    _, state_dict = timm_checkpoint
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    width = tensors["norm.weight"].shape[0]
    tensors["norm.weight"], tensors["norm.bias"] = torch.ones(width), torch.zeros(width)
    tensors["head.fc.weight"] = torch.full((1000, width), 1e4)
    checkpoint = tmp_path / "ill_conditioned.safetensors"
    safetensors.torch.save_file(tensors, checkpoint)
    out = tmp_path / "x.weights.h5"
    with pytest.raises(SystemExit) as exit_info:
        cli.run(convert_command.main, ["--model", NAME, "--checkpoint", str(checkpoint), "--output", str(out),
                                       "--image-size", str(SIZE), "--check"])
    assert exit_info.value.code == 1, capsys.readouterr()
    printed = capsys.readouterr()
    assert '"relative_error"' in printed.out and "wrote" not in printed.out
    assert re.search(r"^error: --check failed, ich_keras and timm disagree \(relative error \d\.\d\de[-+]\d\d > "
                     rf"tolerance 0\.0001.*\); {re.escape(str(out))} was not written$", printed.err, re.M), printed.err
    assert not out.exists()


@pytest.mark.parametrize("bias", [0.0, -6.9])
def test_a_check_of_a_head_of_zeros_compares_the_body_and_passes(timm_checkpoint, tmp_path, capsys, bias):
    # A head of zeros (timm's weight_init="jax" for ViT; bias -log(classes) with "jax_nlhb") gives every image its
    # bias as logits. Compared as logits, zeros made the relative error 0/0 = NaN and a faithful conversion exited 1;
    # a constant bias passed whatever the body. The body's features are compared instead.
    _, state_dict = timm_checkpoint
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    tensors["head.fc.weight"] = torch.zeros_like(tensors["head.fc.weight"])
    tensors["head.fc.bias"] = torch.full_like(tensors["head.fc.bias"], bias)
    checkpoint = tmp_path / "zero_head.safetensors"
    safetensors.torch.save_file(tensors, checkpoint)
    out = tmp_path / "zero_head.weights.h5"
    argv = ["--model", NAME, "--checkpoint", str(checkpoint), "--output", str(out), "--image-size", str(SIZE),
            "--check"]
    assert convert_command.main(argv) == 0
    printed = capsys.readouterr().out
    assert '"compared": "pre-logits features (the checkpoint\'s head is all zeros)"' in printed, printed
    assert "NaN" not in printed and out.is_file()


@pytest.mark.slow  # 10 s: a fresh process importing torch, timm and TensorFlow
def test_check_prints_no_warnings_of_timm_code(timm_checkpoint, tmp_path):
    # A fresh process: torch prints one of them once per process, so an earlier test here could hide it. At 224 px
    # timm's checkpoint filter resizes test_coatnet's tables (its own size is 160) and trips both.
    import subprocess
    import sys

    folder, _ = timm_checkpoint
    done = subprocess.run([sys.executable, "-m", "ich_keras.convert", "--model", NAME, "--checkpoint",
                           str(folder / "model.safetensors"), "--output", str(tmp_path / "x.weights.h5"), "--check"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"top1_agreement": 1.0' in done.stdout and "Warning" not in done.stderr, done.stderr


def test_a_checkpoint_of_another_image_size_is_resized_and_says_so(timm_checkpoint, tmp_path, capsys):
    """timm's test_coatnet is made at 160 px while --image-size defaults to 224: convert names what it resized, as
    fit does for its model.init."""
    folder, _ = timm_checkpoint  # made at SIZE px
    argv = ["--model", NAME, "--checkpoint", str(folder / "model.safetensors"), "--image-size", str(SIZE)]
    assert convert_command.main([*argv, "--output", str(tmp_path / "same.weights.h5")]) == 0
    assert "resized" not in capsys.readouterr().out
    argv[-1] = str(SIZE // 2)
    assert convert_command.main([*argv, "--output", str(tmp_path / "small.weights.h5")]) == 0
    printed = capsys.readouterr().out
    assert "Note: 2 relative-position tables resized from a 4x4 to a 2x2 feature map, as timm resizes them" in printed
    assert "Note: 1 relative-position table resized from a 2x2 to a 1x1 feature map" in printed
