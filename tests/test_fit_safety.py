"""fit fails safely: a failed start writes nothing, a run with no finished epoch starts again, checkpoints whose run
state is gone are never deleted by a start from scratch, a second fit on a run directory in use stops at once (as
does one whose run state another fit wrote while it started), divergence stops training before anything of its
epoch is kept, checkpoint files leave only after the state stops naming them, and a finished run extended keeps no
results of its shorter schedule while it trains."""

import dataclasses
import json
import shutil

import pytest

from ich_keras import checkpoints, folder_lock, resume, train
from ich_keras.config import KeepRule, ModelConfig, config_from_dict
from ich_keras.rundir import load_run
from ich_keras.errors import UserError
from ich_keras.train import run
from image_folder import make_image_folder


def _config(source, **train):
    return config_from_dict({
        "data": {"source": str(source), "image_size": 32, "val_fraction": 0.25},
        "augment": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        "model": {"name": "coatnet_tiny"},
        "train": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "warmup_epochs": 0, **train},
        "checkpoint": {"keep": [{"metric": "loss", "mode": "min", "k": 1}]},
        "log": {"verbose": 0},
    })


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("photos"), classes=2, per_class=6, size=32)


def test_a_failed_start_writes_nothing_and_the_fixed_config_starts(photos, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=r"smaller than one effective batch.*batch_size=64"):
        run(_config(photos, batch_size=64), workdir)
    with pytest.raises(UserError, match=r"smaller than one effective batch"):  # also when steps_per_epoch is set
        run(_config(photos, batch_size=64, steps_per_epoch=2), workdir)
    assert not workdir.exists()
    init = str(tmp_path / "missing.weights.h5")
    missing = dataclasses.replace(_config(photos), model=ModelConfig("coatnet_tiny", init))
    with pytest.raises(UserError, match=r"model.init='.*missing.weights.h5' does not exist: coatnet_tiny has no "
                                        r"published ImageNet weights: name a checkpoint or soup"):
        run(missing, workdir)
    resnet = dataclasses.replace(_config(photos), model=ModelConfig("resnet50", init))
    with pytest.raises(UserError, match=r"does not exist: convert ImageNet weights \(timm/resnet50.a1_in1k\) with "
                                        r"`python -m ich_keras.convert --model resnet50"):
        run(resnet, workdir)
    assert not workdir.exists()
    # A file that is there but no weights (cut short by a copy): refused before the data scan and the model build,
    # which with several processes are collective.
    damaged = tmp_path / "damaged.weights.h5"
    damaged.write_bytes(b"half a file")
    cut = dataclasses.replace(_config(photos), model=ModelConfig("coatnet_tiny", str(damaged)))
    with pytest.raises(UserError, match=r"model.init: Cannot read weights file as HDF5.*damaged.weights.h5"):
        run(cut, workdir)
    timm_file = tmp_path / "model.safetensors"
    timm_file.write_bytes(b"{}")
    downloaded = dataclasses.replace(_config(photos), model=ModelConfig("coatnet_tiny", str(timm_file)))
    with pytest.raises(UserError, match=r"model.init: The weights are a timm / torch checkpoint.*--model coatnet_tiny"):
        run(downloaded, workdir)
    assert not workdir.exists()
    # A directory whose run never finished an epoch (a start killed before epoch 1 ended, here while its
    # checkpoint was being written) starts again.
    from ich_keras import run_start

    run_start.write_start(run_start.prepare(_config(photos), workdir))
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints/.tmp-epoch_001.weights.h5-x1y2.weights.h5").write_bytes(b"half a file")
    results = run(_config(photos), workdir)
    assert results["best"]["loss"]["epoch"] == 1
    with pytest.raises(UserError, match="already holds a run with finished epochs"):
        run(_config(photos), workdir)


def test_a_new_run_never_goes_into_a_folder_of_other_files(photos, tmp_path):
    # fit --workdir into a project folder wrote over its config.json, results.json and history.csv and deleted its
    # checkpoints/my_model.weights.h5; into a split of the data it wrote run files among the class folders.
    project = tmp_path / "project"
    (project / "checkpoints").mkdir(parents=True)
    files = {"config.json": "{\"lr\": 0.1}", "results.json": "{}", "history.csv": "epoch\n",
             "checkpoints/my_model.weights.h5": "mine"}
    for name, text in files.items():
        (project / name).write_text(text)
    for workdir, named in ((project, r"checkpoints/my_model.weights.h5, config.json \(not a run's\)"),
                           (photos / "train", "class_0, class_1"), (photos, "test, train")):
        before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
        with pytest.raises(UserError, match=rf"The --workdir holds files that no run start wrote \({named}\)"):
            run(_config(photos), workdir)
        assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
    assert {name: (project / name).read_text() for name in files} == files


def test_a_start_that_failed_anywhere_starts_again(photos, tmp_path):
    # What a start killed at any point leaves (a manifest half written, the logger's folder), beside a log the
    # shell opened for fit's output before fit ran: a run start, which the next fit takes over.
    from ich_keras import run_start

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "fit.log").write_text("the shell's redirect of fit's output\n")
    run_start.check_startable(workdir)
    run_start.write_start(run_start.prepare(_config(photos), workdir))
    for folder in ("checkpoints", "tensorboard", "state"):
        (workdir / folder).mkdir()
    checkpoints.write_manifest(workdir, checkpoints.empty_manifest(_config(photos).checkpoint.keep))
    for name in (".lock", "history.csv", "same_images.txt", "checkpoints/.tmp-manifest.json-ab12cd34",
                 "state/.tmp-state.npz-1a2b3c4d.npz", ".DS_Store"):
        (workdir / name).write_text("")
    assert run_start.not_a_run_start(workdir) == []
    run_start.check_startable(workdir)


def test_a_resume_before_the_first_epoch_checks_its_model_init_before_anything_else(photos, tmp_path):
    # No epoch finished: the resume starts from model.init again, so a file gone meanwhile is named at the start
    # (with several processes inside the block that stops them all), not in the model build.
    from ich_keras import models, run_start
    from ich_keras.init_weights import save_model_weights

    init = save_model_weights(models.build("coatnet_tiny", 2, 32), tmp_path / "w0.weights.h5")
    cfg = dataclasses.replace(_config(photos), model=ModelConfig("coatnet_tiny", str(init)))
    run_start.write_start(run_start.prepare(cfg, tmp_path / "run"))  # a start killed before its first epoch ended
    init.unlink()
    with pytest.raises(UserError, match=r"Cannot start the run: model.init='.*w0.weights.h5' does not exist"):
        run(load_run(tmp_path / "run").config, tmp_path / "run", resume_run=True)


def test_checkpoints_whose_run_state_is_gone_are_never_deleted_by_a_start_from_scratch(photos, tmp_path):
    workdir = tmp_path / "run"
    cfg = _config(photos, epochs=2)
    cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, keep=(KeepRule("loss", "min", 2),)))
    run(cfg, workdir)
    shutil.rmtree(workdir / "state")  # e.g. to free disk space
    kept = sorted(p.name for p in (workdir / "checkpoints").glob("*.weights.h5"))
    assert kept == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    for start in (lambda: run(load_run(workdir).config, workdir, resume_run=True), lambda: run(cfg, workdir)):
        with pytest.raises(UserError, match=r"no run state \(state/state.npz\).*checkpoint='epoch_002.weights.h5'"):
            start()
        assert sorted(p.name for p in (workdir / "checkpoints").glob("*.weights.h5")) == kept
    # Only epoch 1's file left (keep k=1, say): the manifest still says later epochs finished.
    (workdir / "checkpoints/epoch_002.weights.h5").unlink()
    with pytest.raises(UserError, match="no run state .*epochs in the manifest up to 2"):
        run(cfg, workdir)
    assert (workdir / "checkpoints/epoch_001.weights.h5").is_file()


def test_a_second_fit_on_a_run_directory_in_use_stops_at_once_and_changes_nothing(photos, tmp_path):
    workdir = tmp_path / "run"
    run(_config(photos), workdir)

    def files():
        return {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}

    before = files()
    for holder in ("fit", "soup command"):  # the message names the command that holds it
        in_use = (rf"Another {holder} \(pid \d+ on .+\) is writing to .*run; wait for it to finish or pick another "
                  r"--workdir")
        with folder_lock.held(workdir, holder, "..."), pytest.raises(UserError, match=in_use):
            run(load_run(workdir).config, workdir, resume_run=True)
    assert files() == before


def test_a_fit_whose_run_state_another_fit_wrote_while_it_started_stops_before_writing(photos, tmp_path,
                                                                                      monkeypatch):
    workdir = tmp_path / "run"
    run(_config(photos), workdir)
    state = workdir / resume.STATE_FILE
    compile_model = train.compile_model

    def compiled_while_another_fit_finished_an_epoch(*args):
        compile_model(*args)
        state.write_bytes(state.read_bytes() + b" ")  # after this fit read the state, before it writes anything

    monkeypatch.setattr(train, "compile_model", compiled_while_another_fit_finished_an_epoch)
    history = (workdir / "history.csv").read_text()
    cfg = dataclasses.replace(load_run(workdir).config, train=dataclasses.replace(load_run(workdir).config.train,
                                                                                  epochs=2))
    with pytest.raises(UserError, match="Another fit wrote the run state while this one started"):
        run(cfg, workdir, resume_run=True)
    assert (workdir / "history.csv").read_text() == history


def test_divergence_stops_fit_before_anything_of_the_epoch_is_kept(photos, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=r"Training diverged in epoch 1: the (train|val) loss is (nan|inf)"):
        run(_config(photos, learning_rate=1e12, global_clipnorm=0.0), workdir)
    assert not list((workdir / "checkpoints").glob("*.weights.h5"))
    assert not (workdir / resume.STATE_FILE).exists()


@pytest.mark.slow  # 10 s: a fit killed, then resumed
def test_a_kill_before_the_state_is_saved_leaves_every_file_the_state_names(photos, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    save_state = resume.save_state

    def killed_in_epoch_2(run_dir, model, epoch, record):
        if epoch == 2:  # after TopKCheckpoints wrote epoch 2's manifest, before the state holds it
            raise KeyboardInterrupt
        save_state(run_dir, model, epoch, record)

    monkeypatch.setattr(resume, "save_state", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(_config(photos, epochs=3, learning_rate=3e-3), workdir)
    monkeypatch.setattr(resume, "save_state", save_state)
    state = resume.load_state(workdir)
    assert state.epoch == 1
    # history.csv never lists an epoch the state does not hold (it listed epoch 2, which the resume trains again)
    assert [row.split(",")[0] for row in (workdir / "history.csv").read_text().splitlines()[1:]] == ["1"]
    for name in state.record["manifest"]["kept"].values():  # what the resume will write back as the manifest
        assert (workdir / "checkpoints" / name).is_file()
    (workdir / "state" / ".tmp-state.npz-abc.npz").write_bytes(b"half a file")
    (workdir / ".tmp-history.csv-1a2b3c4d").write_bytes(b"half a file")
    (workdir / ".tmp-config.json-5e6f7a8b").write_bytes(b"half a file")
    (workdir / ".tmp-model.onnx-9c0d1e2f").write_bytes(b"an export writing beside the run's files")
    run(load_run(workdir).config, workdir, resume_run=True)
    assert not list((workdir / "state").glob(".tmp-*"))  # swept
    assert [t.name for t in workdir.glob(".tmp-*")] == [".tmp-model.onnx-9c0d1e2f"]  # fit's own files only
    manifest = json.loads((workdir / "checkpoints/manifest.json").read_text())
    assert sorted(map(int, manifest["epochs"])) == [1, 2, 3]
    for name in manifest["kept"].values():
        assert (workdir / "checkpoints" / name).is_file()


@pytest.mark.slow  # 8 s: a fit, extended, killed
def test_a_finished_run_extended_and_killed_keeps_no_results_of_the_shorter_schedule(photos, tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    run(_config(photos, epochs=1), workdir)
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 1
    save_state = resume.save_state

    def killed(run_dir, model, epoch, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(resume, "save_state", killed)
    config = load_run(workdir).config
    extended = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=2))
    with pytest.raises(KeyboardInterrupt):
        run(extended, workdir, resume_run=True)
    assert not (workdir / "results.json").exists()  # a sweep would have taken the point as done
    monkeypatch.setattr(resume, "save_state", save_state)
    run(extended, workdir, resume_run=True)
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 2


def test_a_resume_whose_kept_checkpoints_were_deleted_or_replaced_stops_naming_the_file(photos, tmp_path):
    # A kept file deleted or replaced by hand: the resumed run trained all its epochs and only then failed, scoring
    # its best checkpoint on test (or left a manifest naming a missing file for soup to trip on). A checkpoint of a
    # later epoch than the run wrote was deleted without a word. Now each stops the resume before anything is written.
    from soup_fixtures import conv_model

    def _stamps(workdir):  # the lock file aside: the resume holds it while it checks
        return {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != folder_lock.LOCK}

    finished = tmp_path / "finished"
    config = _config(photos, epochs=2)
    config = dataclasses.replace(config, checkpoint=dataclasses.replace(config.checkpoint, keep=(
        KeepRule("loss", "min", 2),)))
    run(config, finished)
    extended = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=3))

    def damaged(name, damage):
        workdir = tmp_path / name
        shutil.copytree(finished, workdir)
        damage(workdir / "checkpoints")
        return workdir, _stamps(workdir)

    def stops(workdir, before, message):
        with pytest.raises(UserError, match=message):
            run(extended, workdir, resume_run=True)
        assert _stamps(workdir) == before  # nothing written, nothing deleted

    workdir, before = damaged("deleted", lambda folder: (folder / "epoch_002.weights.h5").unlink())
    stops(workdir, before, r"Epoch 2's kept checkpoint is missing.*Received: missing='.*deleted/checkpoints/"
                           r"epoch_002\.weights\.h5'")
    workdir, before = damaged("replaced", lambda folder: conv_model().save_weights(folder / "epoch_001.weights.h5"))
    stops(workdir, before, r"Epoch 1's kept checkpoint does not hold this run's weights .*Mismatched architectures"
                           r".*Received: checkpoint='.*replaced/checkpoints/epoch_001\.weights\.h5'")
    workdir, before = damaged("later", lambda folder: shutil.copy(folder / "epoch_001.weights.h5",
                                                                   folder / "epoch_007.weights.h5"))
    stops(workdir, before, r"checkpoints of epochs after the next one, which this run \(its state ends at epoch 2\) "
                           r"did not write.*Received: files=\['epoch_007\.weights\.h5'\]")
