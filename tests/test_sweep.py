"""`python -m ich_keras.sweep`: the grid as pure functions, and a 2-point sweep end to end (trained, then skipped)."""

from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest
from image_folder import make_image_folder

from ich_keras import models, sweep, sweep_runs, sweeps
from ich_keras.errors import UserError
from ich_keras.weight_files import read


def test_grid_is_the_cartesian_product_in_order_with_stable_names():
    grid = sweeps.parse_grids(["train.learning_rate=[1e-4,3e-5]", "train.seed=[0, 1]"])
    points = sweeps.expand(grid)
    assert [p.name for p in points] == [
        "learning_rate=0.0001,seed=0", "learning_rate=0.0001,seed=1",
        "learning_rate=3e-5,seed=0", "learning_rate=3e-5,seed=1",
    ]
    assert [p.index for p in points] == [0, 1, 2, 3]
    assert points[2].overrides == ["train.learning_rate=3e-05", "train.seed=0"]
    # Another spelling of the same values names the same directories: a restarted sweep finds its runs.
    again = sweeps.expand(sweeps.parse_grids(["train.learning_rate=[0.0001, 0.00003]", "train.seed=[0,1]"]))
    assert [p.name for p in again] == [p.name for p in points]


def test_names_are_filesystem_safe_and_keys_shared_by_sections_stay_qualified():
    grid = sweeps.parse_grids(["model.init=[../w/a.weights.h5, '']", "data.seed=[1]", "train.seed=[2]",
                               "train.ema=[true]"])
    names = [p.name for p in sweeps.expand(grid)]
    assert names == ["init=w-a.weights.h5,data.seed=1,train.seed=2,ema=true",
                     "init=empty,data.seed=1,train.seed=2,ema=true"]
    assert all("/" not in n and " " not in n for n in names)
    long = sweeps.expand({"model.init": ["x" * 300]})[0].name
    assert len(long) <= sweeps.MAX_NAME


def test_bare_words_are_strings():
    assert sweeps.parse_grid("model.name=[coatnet_tiny, resnet50]") == ("model.name", ["coatnet_tiny", "resnet50"])


@pytest.mark.parametrize(("spec", "message"), [
    ("train.seed", "must look like section.key"),
    ("seed=[0,1]", "section.key"),
    ("train.seed=3", "must be a list"),
    ("train.seed=[]", "empty"),
    ("train.seed=[1,1]", "repeats"),
])
def test_bad_grid_syntax_is_a_user_error_naming_it(spec, message):
    with pytest.raises(UserError, match=message) as error:
        sweeps.parse_grid(spec)
    assert repr(spec) in str(error.value)


def test_a_key_given_twice_and_names_that_would_collide_are_user_errors():
    with pytest.raises(UserError, match="given twice.*'train.seed'"):
        sweeps.parse_grids(["train.seed=[0]", "train.seed=[1]"])
    with pytest.raises(UserError, match="share the run directory 'init=a-b'"):
        sweeps.expand({"model.init": ["a/b", "a b"]})


def test_the_same_grid_in_another_order_keeps_the_earlier_sweeps_names(tmp_path):
    # The README's sweep given again with its --grid flags swapped named all four points anew and trained them again.
    (tmp_path / sweeps.SWEEP_FILE).write_text(json.dumps({"grid": {"train.learning_rate": [1e-4, 3e-5],
                                                                    "train.seed": [0, 1]}}))
    swapped = sweep_runs.in_earlier_order({"train.seed": [0, 1], "train.learning_rate": [1e-4, 3e-5]}, tmp_path)
    assert list(swapped) == ["train.learning_rate", "train.seed"]
    assert sweeps.expand(swapped)[0].name == "learning_rate=0.0001,seed=0"
    other = {"train.seed": [0, 1], "train.batch_size": [4]}
    assert list(sweep_runs.in_earlier_order(other, tmp_path)) == ["train.seed", "train.batch_size"]  # another grid
    assert list(sweep_runs.in_earlier_order(other, tmp_path / "new")) == list(other)  # no sweep there yet


def test_a_sweep_of_another_config_is_refused_before_its_key_order_is_taken(tiny_config, tmp_path, capsys):
    output = tmp_path / "sweep"
    output.mkdir()
    grid = {"train.seed": [0, 1], "train.batch_size": [4]}
    sweep_runs.write_sweep_file(output, str(tiny_config), ["train.epochs=2"], grid, sweeps.expand(grid))
    with pytest.raises(UserError, match="holds a sweep of another config"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.batch_size=[4]", "--grid", "train.seed=[0,1]",
                    "--output", str(output), "--no-soup"])
    assert "Grid keys" not in capsys.readouterr().out


def test_a_sweep_is_the_same_from_any_working_directory_and_other_files_are_another(tiny_config, tmp_path,
                                                                                     monkeypatch):
    # The base config held relative paths as typed: the same sweep continued from another directory was refused,
    # and the same spelling from elsewhere, naming another W0, was taken for the same sweep.
    output = tmp_path / "sweep"
    output.mkdir()
    grid = {"train.seed": [0, 1]}
    for folder in ("a", "b"):
        (tmp_path / folder / "weights").mkdir(parents=True)
        (tmp_path / folder / "weights" / "w0.weights.h5").write_bytes(folder.encode())
    (tmp_path / "a" / "deeper").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    sweep_runs.write_sweep_file(output, str(tiny_config), ["model.init=weights/w0.weights.h5"], grid,
                                sweeps.expand(grid))
    monkeypatch.chdir(tmp_path / "a" / "deeper")  # the same files, spelled from elsewhere: the same sweep
    sweep_runs.write_sweep_file(output, str(tiny_config), ["model.init=../weights/w0.weights.h5"], grid,
                           sweeps.expand(grid))
    monkeypatch.chdir(tmp_path / "b")  # the same spelling, another W0: another sweep
    with pytest.raises(UserError, match="holds a sweep of another config"):
        sweep_runs.write_sweep_file(output, str(tiny_config), ["model.init=weights/w0.weights.h5"], grid,
                               sweeps.expand(grid))


def test_a_sweep_whose_images_moved_is_the_same_sweep_and_their_new_place_reaches_its_soups(tiny_config, tmp_path):
    # `--set data.source=DIR` where the images are now: the error that the data folder was gone advised it, then the
    # sweep was refused as "a sweep of another config or --set".
    output = tmp_path / "sweep"
    output.mkdir()
    grid = {"train.seed": [0, 1]}
    sweep_runs.write_sweep_file(output, str(tiny_config), [], grid, sweeps.expand(grid))
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "images", moved)
    sweep_runs.write_sweep_file(output, str(tiny_config), [f"data.source={moved}"], grid, sweeps.expand(grid))
    with pytest.raises(UserError, match="holds a sweep of another config"):  # other data settings: another sweep
        sweep_runs.write_sweep_file(output, str(tiny_config), [f"data.source={moved}", "data.val_fraction=0.5"], grid,
                               sweeps.expand(grid))
    argv = sweeps.cook_argv(str(tiny_config), [f"data.source={moved}", "train.epochs=2"], ["uniform"],
                            [output / "seed=0"], output, quiet=True)
    assert argv[argv.index("--set") + 1] == f"data.source={moved}" and "train.epochs=2" not in argv


def test_points_to_start_on_a_changed_data_folder_are_refused_before_they_train(tiny_config, tmp_path):
    # A class folder added after the first point trained: the second trained on three classes, and the soups across
    # them failed after it.
    from ich_keras import data, split_lists

    output = tmp_path / "sweep"
    points = sweeps.expand({"train.seed": [0, 1]})
    configs = sweep_runs.check_points(str(tiny_config), [], points)
    trained = output / points[0].name
    trained.mkdir(parents=True)
    split_lists.write_splits(trained, data.build_splits(configs[points[0].name].data))
    (trained / "results.json").write_text("{}")
    sweep_runs.check_started_points(configs, output)  # the same data: the points still to start may train
    for split in ("train", "test"):
        shutil.copytree(tmp_path / "images" / split / "class_1", tmp_path / "images" / split / "class_2")
    with pytest.raises(UserError, match=r"The data folder changed since point seed=0 started: the points still to "
                                        r"start would differ in their classes .*'class_2'.*--no-soup"):
        sweep_runs.check_started_points(configs, output)


def test_a_resumed_point_says_it_keeps_its_own_log_settings(tiny_config, tmp_path, capsys):
    # The sweep accepts --set log.tensorboard=true again (log is no trained setting), but a point it resumes keeps
    # its config.json's (fit --resume takes no log key but verbose): no TensorBoard there, and no word.
    from ich_keras.config import config_to_dict

    points = sweeps.expand({"train.seed": [0]})
    kept = sweep_runs.check_points(str(tiny_config), [], points)[points[0].name]
    (tmp_path / "point").mkdir()
    (tmp_path / "point" / "config.json").write_text(json.dumps(config_to_dict(kept)))
    asked = sweep_runs.check_points(str(tiny_config), ["log.tensorboard=true", "log.verbose=2"], points)[points[0].name]
    sweep_runs._note_the_runs_own_log_settings(asked, tmp_path / "point")
    assert capsys.readouterr().out == ("  resumes with its own log.tensorboard=False (config.json); the sweep's log "
                                       "settings apply to the points that start\n")
    sweep_runs._note_the_runs_own_log_settings(kept, tmp_path / "point")
    assert capsys.readouterr().out == ""


def test_only_and_shard_split_the_grid_without_overlap():
    points = sweeps.expand({"train.seed": list(range(7))})
    shards = [sweeps.select(points, shard=sweeps.parse_shard(f"{i}/3")) for i in range(3)]
    assert sorted(p.index for shard in shards for p in shard) == list(range(7))
    assert [p.index for p in shards[1]] == [1, 4]
    assert sweeps.select(points, only=5) == [points[5]]
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(UserError, match="--shard"):
            sweeps.parse_shard(bad)
    with pytest.raises(UserError, match="--only 7"):
        sweeps.select(points, only=7)


def test_parallel_gives_each_device_one_shard_and_no_soup():
    commands = sweeps.shard_commands(["--config", "x.toml", "--grid", "train.seed=[0,1]", "--parallel"], ["2", "5"])
    assert commands == [
        ({"CUDA_VISIBLE_DEVICES": "2"}, ["--config", "x.toml", "--grid", "train.seed=[0,1]", "--shard", "0/2",
                                         "--no-soup"]),
        ({"CUDA_VISIBLE_DEVICES": "5"}, ["--config", "x.toml", "--grid", "train.seed=[0,1]", "--shard", "1/2",
                                         "--no-soup"]),
    ]


def test_an_unknown_key_or_bad_value_fails_before_anything_is_written(tiny_config, tmp_path):
    output = tmp_path / "sweep"
    with pytest.raises(UserError, match="train.sede"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.sede=[0,1]", "--output", str(output)])
    with pytest.raises(UserError, match="Grid point 1 .*batch_size"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.batch_size=[4,-1]", "--output", str(output)])
    with pytest.raises(UserError, match="train.epochz") as error:  # a --set typo is not blamed on the grid
        sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--set", "train.epochz=1",
                    "--output", str(output)])
    assert "Grid point" not in str(error.value)
    # The model and the image size of every point are checked too, not found after the earlier points trained.
    with pytest.raises(UserError, match="Grid point 1 .*Unknown model 'nope'"):
        sweep.main(["--config", str(tiny_config), "--grid", "model.name=[coatnet_tiny,nope]", "--output", str(output)])
    with pytest.raises(UserError, match="Grid point 1 .*multiple of 32.*image_size=48"):
        sweep.main(["--config", str(tiny_config), "--grid", "data.image_size=[32,48]", "--output", str(output)])
    with pytest.raises(UserError, match=r"(?s)Grid point 1 .*model.init='nope.weights.h5' does not exist"):
        sweep.main(["--config", str(tiny_config), "--grid", 'model.init=["",nope.weights.h5]', "--output",
                    str(output)])
    with pytest.raises(UserError, match="another command's table"):
        sweep.main(["--config", str(tiny_config), "--grid", "soup.methods=[1]", "--output", str(output)])
    # A soup recipe that cannot run: found before the points train, not after.
    with pytest.raises(UserError, match=r"--model-stock needs the pretrained weights W0: .*--set soup.pretrained=FILE"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--soup", "uniform", "model_stock",
                    "--output", str(output)])
    with pytest.raises(UserError, match="TIES density must lie in"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--soup", "ties", "--set",
                    f"soup.pretrained={tiny_config}", "--set", "soup.ties_density=2", "--output", str(output)])
    with pytest.raises(UserError, match="Unknown soup method.*'soop'"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0]", "--soup", "soop",
                    "--output", str(output)])
    assert not output.exists()


def test_a_grid_whose_runs_cannot_be_souped_together_fails_before_anything_trains(tiny_config, tmp_path):
    # Every point trained, then `soup --runs` refused them: "its model differs ('test_coatnet' vs 'coatnet_tiny')".
    output, w0 = tmp_path / "sweep", tmp_path / "w0.weights.h5"
    models.build("coatnet_tiny", 1000, 32).save_weights(w0)
    for grid, what in (("model.name=[coatnet_tiny,test_coatnet]", "model"),
                       ("data.image_size=[32,64]", "image size"),
                       ("model.head_seed=[0,1]", "new head's seed")):
        sets = [] if what != "new head's seed" else ["--set", f"model.init={w0}"]
        with pytest.raises(UserError, match=rf"points differ in their {what}.*, so their runs cannot be souped "
                                            r"together .*pass --no-soup"):
            sweep.main(["--config", str(tiny_config), "--grid", grid, *sets, "--output", str(output)])
    assert not output.exists()
    # Seeds of fine-tunes of one W0, the sweep soups are made for, pass.
    points = sweeps.expand(sweeps.parse_grids(["train.seed=[0,1]"]))
    sweep_runs.check_soupable(sweep_runs.check_points(str(tiny_config), [f"model.init={w0}"], points))


def test_a_grid_whose_points_split_the_data_otherwise_fails_before_anything_trains(tiny_config, tmp_path):
    # Every point trained, then `soup --runs` refused them: "its val split differs ('4 other images' vs ...)".
    # tiny_config's folder has train/ and test/: val is carved from train (data.val_fraction, data.split_seed).
    output, images = tmp_path / "sweep", tmp_path / "images"
    other = make_image_folder(tmp_path / "other", classes=3, per_class=8, size=32)
    for grid, key, a, b in (("data.split_seed=[0,1]", "data.split_seed", 0, 1),
                            ("data.val_fraction=[0.25,0.5]", "data.val_fraction", 0.25, 0.5),
                            ("data.max_per_class=[0,6]", "data.max_per_class", 0, 6),
                            (f'data.source=["{images}","{other}"]', "data.source", str(images), str(other))):
        with pytest.raises(UserError, match=r"points differ in data settings that decide their classes or val and "
                                            r"test images, so their runs cannot be souped together.*pass --no-soup"
                                            ) as error:
            sweep.main(["--config", str(tiny_config), "--grid", grid, "--output", str(output)])
        assert f"{key}={a!r} at " in str(error.value) and f"{key}={b!r} at " in str(error.value)
        assert "split differs" in str(error.value) or "classes differs" in str(error.value)  # what the build found
    assert not output.exists()


def test_a_grid_differing_in_near_copies_is_refused_where_the_data_holds_some(tiny_config, tmp_path):
    # Every train image of class_0 is one picture (other bytes each): with near copies looked for, the images carved
    # for val have a copy in train and stay there; compared by bytes, they are carved. Without near copies in the
    # data (the parametrized test below), the same grid passes.
    from PIL import Image, PngImagePlugin

    source = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=32, splits=CARVED_VAL)
    folder = source / "train" / "class_0"
    pixels = np.asarray(Image.open(sorted(folder.iterdir())[0]).convert("RGB"))
    for i, path in enumerate(sorted(folder.iterdir())):
        path.unlink()
        info = PngImagePlugin.PngInfo()
        info.add_text("copy", str(i))  # the same pixels in files of other bytes: near copies, not identical files
        Image.fromarray(pixels).save(folder / f"{i:03d}.png", pnginfo=info)
    with pytest.raises(UserError, match=r"points differ in data settings.*Received: data\.near_copies=True at "
                                        r".*their val split differs"):
        sweep.main(["--config", str(tiny_config), "--set", f"data.source={source}", "--grid",
                    "data.near_copies=[true,false]", "--output", str(tmp_path / "sweep"), "--quiet"])
    assert not (tmp_path / "sweep").exists()


def _splits_differ(configs: dict) -> bool:
    """Whether the first two configs' splits, as fit builds them, differ in their classes or val / test images."""
    from ich_keras import data
    from ich_keras.soups.across_runs import _same_examples

    first, other = (data.build_splits(cfg.data) for cfg in list(configs.values())[:2])
    return first.class_names != other.class_names or not all(
        _same_examples(first.splits[s], other.splits[s]) for s in ("val", "test"))


CARVED_VAL, CARVED_BOTH, NONE_CARVED = ("train", "test"), ("train",), ("train", "val", "test")


@pytest.mark.parametrize(("grid", "folders", "differ"), [
    ("data.split_seed=[0,1]", CARVED_VAL, True), ("data.split_seed=[0,1]", NONE_CARVED, False),
    ("data.val_fraction=[0.25,0.5]", CARVED_VAL, True), ("data.val_fraction=[0.25,0.5]", NONE_CARVED, False),
    ("data.val_count=[0,6]", CARVED_VAL, True), ("data.test_fraction=[0.2,0.4]", CARVED_VAL, False),
    ("data.test_fraction=[0.2,0.4]", CARVED_BOTH, True), ("data.max_per_class=[0,6]", NONE_CARVED, True),
    ("data.skip_bad_images=[false,true]", CARVED_BOTH, False), ("data.cache=[true,false]", CARVED_VAL, False),
    # Settings that could carve other splits and do not: 4 = 0.25 of 2 x 8 train images; no near copies in the data.
    ("data.val_count=[0,4]", CARVED_VAL, False), ("data.near_copies=[true,false]", CARVED_VAL, False),
])
def test_the_data_check_refuses_the_grids_whose_splits_differ_and_passes_the_others(tiny_config, tmp_path, grid,
                                                                                   folders, differ):
    # The sweep's check and the soups' (`check_compatible`, on the splits the runs built) must agree: a grid the
    # soups would refuse fails before anything trains, and one they would take trains.
    source = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=32, splits=folders)
    points = sweeps.expand(sweeps.parse_grids([grid]))
    configs = sweep_runs.check_points(str(tiny_config), [f"data.source={source}"], points)
    assert _splits_differ(configs) == differ
    if differ:
        with pytest.raises(UserError, match=f"points differ in data settings.*Received: {grid.split('=')[0]}="):
            sweep_runs.check_soupable(configs)
    else:
        sweep_runs.check_soupable(configs)


@pytest.mark.slow  # two trainings and a soup: 96 s of CPU (142 s wall) on the busy 2-core CPU machine
def test_sweep_trains_each_point_soups_across_runs_then_skips_finished_runs(tiny_config, tmp_path, capsys):
    # The paper's path: fine-tunes of one 1000-class W0 with new 2-class heads, seeds 0 and 1.
    w0 = tmp_path / "w0.weights.h5"
    models.build("coatnet_tiny", 1000, 32).save_weights(w0)
    output = tmp_path / "sweep"
    argv = ["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--set", f"model.init={w0}",
            "--output", str(output), "--soup", "uniform", "--quiet"]
    assert sweep.main(argv) == 0
    record = json.loads((output / "sweep.json").read_text())
    names = ["seed=0", "seed=1"]
    assert [p["directory"] for p in record["points"]] == names
    assert [p["values"] for p in record["points"]] == [{"train.seed": 0}, {"train.seed": 1}]
    checkpoints = {name: sorted((output / name / "checkpoints").glob("*.weights.h5")) for name in names}
    for name in names:
        assert json.loads((output / name / "config.json").read_text())["train"]["seed"] == int(name[-1])
        assert len(checkpoints[name]) == 1
    soup = json.loads((output / "soups" / "uniform" / "results.json").read_text())
    assert [i["name"] for i in soup["ingredients"]] == [f"{n}/epoch_001" for n in names]
    assert (output / "soups" / "uniform" / "provenance.json").is_file()
    # Both new heads start from one draw (model.head_seed), whatever train.seed: after three small updates they
    # are still nearly the same (two draws of the head's initializer are uncorrelated).
    heads = [read(checkpoints[name][0]).to_dict()["layers/dense/vars/0"].ravel() for name in names]
    assert np.corrcoef(*heads)[0, 1] > 0.9

    mtimes = {p: p.stat().st_mtime_ns for files in checkpoints.values() for p in files}
    results = {n: (output / n / "results.json").stat().st_mtime_ns for n in names}
    capsys.readouterr()
    assert sweep.main([*argv, "--no-soup"]) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert {n: (output / n / "results.json").stat().st_mtime_ns for n in names} == results


def test_a_failed_point_names_the_soup_command_across_the_finished_ones(tiny_config, tmp_path):
    # The failed point's learning rate diverges in its first epoch; the other point trains.
    output = tmp_path / "sweep"
    with pytest.raises(UserError) as error:
        sweep.main(["--config", str(tiny_config), "--grid", "train.learning_rate=[3e-3,1e30]", "--soup", "uniform",
                    "--output", str(output), "--quiet"])
    message = str(error.value)
    assert message.startswith("1 point(s) or shard(s) failed; fix the cause")
    finished = [p for p in output.iterdir() if (p / "results.json").is_file()]
    assert len(finished) == 1
    command = message.split("Or cook the soups across the 1 finished point(s) alone: ", 1)[1]
    assert shlex.split(command)[:6] == ["python", "-m", "ich_keras.soup", "cook", "--runs", str(finished[0])]
    assert "--uniform" in shlex.split(command) and not (output / "soups").exists()


def test_another_grid_in_the_same_folder_names_the_earlier_points_it_leaves_out(tiny_config, tmp_path, capsys):
    output = tmp_path / "sweep"
    output.mkdir()
    first = {"train.seed": [0, 1]}
    sweep_runs.write_sweep_file(output, str(tiny_config), [], first, sweeps.expand(first))
    wider = {"train.seed": [0, 1, 2]}  # a value added: every earlier point stays in
    sweep_runs.write_sweep_file(output, str(tiny_config), [], wider, sweeps.expand(wider))
    assert "another grid" not in capsys.readouterr().out
    other = {"train.seed": [2]}
    sweep_runs.write_sweep_file(output, str(tiny_config), [], other, sweeps.expand(other))
    assert ("sweep.json held another grid: 2 earlier point(s) (seed=0, seed=1) stay in"
            in capsys.readouterr().out)


def test_a_killed_point_is_resumed_and_a_failed_start_restarted(tiny_config, tmp_path):
    """run_status reads the directory: results.json -> skip, state/ -> resume, anything else -> start."""
    from ich_keras import resume

    directory = tmp_path / "point"
    assert sweeps.run_status(directory) == "start"
    (directory / "config.json").parent.mkdir(parents=True)
    (directory / "config.json").write_text("{}")  # a start that never finished an epoch
    assert sweeps.run_status(directory) == "start"
    (directory / resume.STATE_FILE).parent.mkdir()
    (directory / resume.STATE_FILE).write_bytes(b"")
    assert sweeps.run_status(directory) == "resume"
    (directory / "results.json").write_text("{}")
    assert sweeps.run_status(directory) == "done"


def test_a_run_directory_is_refused_as_the_sweeps_output(tiny_config, tmp_path):
    # `--output runs/NAME` of a fit run trained the points inside it and replaced its own soups/ with theirs.
    run = tmp_path / "run"
    (run / "soups" / "uniform").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "soups" / "uniform" / "soup.weights.h5").write_bytes(b"the run's own soup")
    with pytest.raises(UserError, match=r"--output is a run directory written by fit .*Received: output='.*run'"):
        sweep.main(["--config", str(tiny_config), "--grid", "train.seed=[0,1]", "--output", str(run)])
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "soups"]
    assert (run / "soups" / "uniform" / "soup.weights.h5").read_bytes() == b"the run's own soup"
