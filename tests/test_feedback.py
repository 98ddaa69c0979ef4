"""What commands tell the user: the start-up summary, labelled progress, the outputs list; extending a run's epochs."""

import argparse
import json
import re
import time

import numpy as np
import pytest
from image_folder import make_image_folder
from PIL import Image
from soup_fixtures import linear_model, save_linear

from ich_keras import atomic, data, fit, progress, run_start, soup, soups, summaries
from ich_keras.config import DataConfig, config_from_dict, config_to_dict
from ich_keras.errors import UserError
from ich_keras.soups import inputs


def _facts(**changes):
    values = dict(
        run_dir="runs/demo", model="coatnet_tiny", parameters=1234567, devices=("1 x cpu (cpu)",),
        precision="bfloat16", class_names=("arch", "bell"), split_counts={"train": (40, 38), "val": (5, 4),
                                                                          "test": (10, 9)},
        val_carved=True, batch_size=8, grad_accum_steps=4, steps_per_epoch=8, updates_per_epoch=2, epochs=30,
        first_epoch=0, keep=(("loss", "min", 8), ("f1", "max", 3)), logs=("history.csv", "tensorboard/"))
    values.update(changes)
    return summaries.FitFacts(**values)


def test_fit_summary_names_every_fact_compactly():
    text = summaries.fit_summary(_facts())
    lines = text.splitlines()
    assert len(lines) <= 12
    for expected in ("runs/demo", "coatnet_tiny, 1,234,567 parameters", "1 x cpu (cpu); precision bfloat16",
                     "78 (arch=40 bell=38)", "9 (arch=5 bell=4) (carved from train)", "19 (arch=10 bell=9)",
                     "8 x 4 accumulation = 32 effective", "30 epochs; 8 steps = 2 updates per epoch",
                     "top 8 by val loss (min); top 3 by val f1 (max)", "history.csv, tensorboard/"):
        assert expected in text, expected
    assert "carved" not in next(line for line in lines if line.startswith("test"))
    assert "no image of" not in text
    assert "1 epoch; 2 steps = 1 update per epoch" in summaries.fit_summary(_facts(epochs=1, steps_per_epoch=2,
                                                                                   updates_per_epoch=1))


def test_fit_summary_names_the_host_memory_where_there_is_some_to_name():
    assert "memory" not in summaries.fit_summary(_facts())
    text = summaries.fit_summary(_facts(host_memory="block cache, huge pages (ICH_KERAS_HUGE_PAGES=off: ...)"))
    assert "memory     block cache, huge pages (ICH_KERAS_HUGE_PAGES=off: ...)" in text.splitlines()
    assert len(text.splitlines()) <= 12


def test_fit_summary_says_when_a_reduced_precision_runs_on_cpus():
    hint = "slower than float32 on most CPUs: --set train.precision=float32"
    assert hint in summaries.fit_summary(_facts(precision="bfloat16"))
    assert hint not in summaries.fit_summary(_facts(precision="float32"))
    assert hint not in summaries.fit_summary(_facts(precision="bfloat16", devices=("8 x NVIDIA H200 (gpu)",)))


def test_fit_summary_says_which_classes_a_split_lacks():
    text = summaries.fit_summary(_facts(split_counts={"train": (40, 2), "val": (5, 0), "test": (10, 1)}))
    val = next(line for line in text.splitlines() if line.startswith("val"))
    assert val.endswith("(carved from train); no image of bell: macro precision, recall and F1 count them as 0")


def test_fit_summary_resume_and_many_classes():
    many = tuple(f"class_{i:02d}" for i in range(17))
    text = summaries.fit_summary(_facts(class_names=many, split_counts={"train": tuple(range(10, 27))},
                                        val_carved=False, first_epoch=20))
    assert "306 (10-26 per class)" in text  # 17 names would not fit one line
    assert "epochs 21-30 of 30 (resuming)" in text


def test_fit_summary_of_a_finished_run_resumed_names_no_epoch_range():
    """A resumed run with every epoch done only evaluates: no "epochs 31-30 of 30"."""
    text = summaries.fit_summary(_facts(first_epoch=30))
    assert "all 30 epochs finished (resuming: test evaluation only)" in text
    assert "31-30" not in text


def test_start_line_and_outputs_summary():
    assert summaries.start_line("soup", "runs/demo", "coatnet_tiny", "cook uniform") == \
        "[soup] runs/demo (coatnet_tiny): cook uniform"
    text = summaries.outputs_summary(["a/x.json", "a/y.md", "a/x.json"])
    assert text.splitlines() == ["Wrote 2 files:", "  a/x.json", "  a/y.md"]


def test_written_lists_what_the_command_wrote_not_what_it_found(tmp_path):
    # A resume lists its new checkpoints, not the ones kept from before; a logger's folder by any file it changed.
    kept, replaced, logs, quiet = (tmp_path / "kept.h5", tmp_path / "replaced.json", tmp_path / "tensorboard",
                                   tmp_path / "wandb")
    for folder in (logs, quiet):
        folder.mkdir()
    for path in (kept, replaced, logs / "events", quiet / "run.json"):
        path.write_text("before")
    before = summaries.file_stamps(tmp_path)
    atomic.write_text(replaced, "before")  # the same bytes, written again: a new file
    with open(logs / "events", "a") as f:
        f.write("appended")
    new = tmp_path / "new.h5"
    new.write_text("x")
    paths = [kept, replaced, logs, quiet, new, tmp_path / "absent"]
    assert summaries.written(paths, before) == [replaced, logs, new]


def test_progress_lines_label_count_and_time_left(capsys):
    assert progress.format_step("greedy", "trying epoch_011 on val", 3, 8, 20.0) == \
        "[greedy] trying epoch_011 on val (3/8) ~1 min 00 s left"  # 10 s per step, 6 steps to go
    assert progress.format_step("analyze", "predictions", 2, 7, 5.0) == "[analyze] predictions (2/7)"
    phase = progress.Phase("evaluate", 3)
    for name in ("epoch_001", "epoch_002", "epoch_003"):
        phase.step(f"{name} on test")
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for results
    assert err.splitlines()[0] == "[evaluate] epoch_001 on test (1/3)"
    assert err.splitlines()[2].startswith("[evaluate] epoch_003 on test (3/3) ~")
    quiet = progress.Phase("evaluate", 3, enabled=False)
    quiet.step("x")
    assert capsys.readouterr().err == "" and quiet.index == 1


def test_progress_throttles_many_short_steps(capsys):
    phase = progress.Phase("recalibrate-bn", 50, min_interval_s=3600)
    for _ in range(50):
        phase.step("batch")
    lines = capsys.readouterr().err.splitlines()
    assert [re.search(r"\(\d+/50\)", line).group() for line in lines] == ["(1/50)", "(50/50)"]


def test_a_usually_quick_phase_stays_silent_and_a_slow_one_shows_its_count(capsys):
    quick = progress.Phase("data", 3, quiet_for_s=3600)
    for _ in range(3):
        quick.step("checking the train images")
    assert capsys.readouterr().err == ""
    slow = progress.Phase("data", 3, quiet_for_s=0.05)
    slow.step("checking the train images")
    time.sleep(0.1)
    slow.step("checking the train images")
    slow.step("checking the train images")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[data] checking the train images (2/3)"
    assert lines[1].startswith("[data] checking the train images (3/3) ~") and len(lines) == 2


def test_the_data_check_of_a_small_folder_prints_nothing(tmp_path, capsys):
    for c, name in enumerate(("a", "b")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, c, 0)).save(tmp_path / "train" / name / f"{i}.png")
    splits = data.build_splits(DataConfig(source=str(tmp_path), image_size=8, val_fraction=0.25), progress=True)
    assert sum(len(e.keys) for e in splits.splits.values()) == 8 and capsys.readouterr().err == ""


def test_resume_refuses_any_key_but_epochs_and_the_data_folder(tmp_path):
    atomic.write_json(tmp_path / "config.json", config_to_dict(config_from_dict({"data": {"source": "digits"}})))
    with pytest.raises(UserError, match="train.batch_size=4"):
        run_start.resume_config(tmp_path, ["train.batch_size=4"])
    cfg = run_start.resume_config(tmp_path, ["train.epochs=9", "data.source=2024", "log.verbose=2"])
    assert (cfg.train.epochs, cfg.data.source) == (9, "2024")  # a folder named 2024 is a path, not a number
    assert cfg.log.verbose == 2  # what it prints may change too


def test_resume_accepts_a_set_that_repeats_the_runs_own_value(tmp_path):
    # README's resume of a two-process run: the start's commands with --resume, their --set included.
    stored = config_from_dict({"data": {"source": "digits"}, "train": {"distribution": "data_parallel"}})
    atomic.write_json(tmp_path / "config.json", config_to_dict(stored))
    keep = ", ".join(f'{{metric = "{k.metric}", mode = "{k.mode}", k = {k.k}}}' for k in stored.checkpoint.keep)
    repeated = ['train.distribution="data_parallel"', f"train.batch_size={stored.train.batch_size}",
                f"checkpoint.keep=[{keep}]"]  # a list of tables: compared as the config holds it
    assert run_start.resume_config(tmp_path, repeated) == stored
    with pytest.raises(UserError, match="Received: --set train.distribution=none"):
        run_start.resume_config(tmp_path, ["train.distribution=none"])


def test_resume_accepts_the_starts_relative_model_init(tmp_path, monkeypatch):
    # config.json holds model.init resolved; the start's command gave it relative to its working directory.
    stored = config_from_dict({"data": {"source": "digits"}, "model": {"init": str(tmp_path / "W0.weights.h5")}})
    atomic.write_json(tmp_path / "config.json", config_to_dict(stored))
    monkeypatch.chdir(tmp_path)
    assert run_start.resume_config(tmp_path, ["model.init=W0.weights.h5"]) == stored
    with pytest.raises(UserError, match="Received: --set model.init=W1.weights.h5"):
        run_start.resume_config(tmp_path, ["model.init=W1.weights.h5"])


TINY = """
[data]
source = {source}
image_size = 32
val_fraction = 0.34
[model]
name = "coatnet_tiny"
[train]
epochs = 2
batch_size = 4
steps_per_epoch = 2
restart_epochs = 1.0
[checkpoint]
keep = [{{metric = "loss", mode = "min", k = 3}}]
"""


@pytest.mark.slow  # two fits of coatnet_tiny: ~2 min on the shared 2-core CPU
def test_resume_extends_a_finished_run(tmp_path, capsys):
    source = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=32)
    workdir = tmp_path / "run"
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(source=json.dumps(str(source))))
    assert fit.main(["--config", str(config), "--workdir", str(workdir), "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "8 (class_0=4 class_1=4)" in first and "(carved from train)" in first  # the start-up summary
    assert "Wrote " in first and str(workdir / "results.json") in first

    with pytest.raises(UserError, match="train.epochs=1"):
        fit.main(["--resume", str(workdir), "--set", "train.epochs=1", "--quiet"])
    # Started --quiet: that was the command's; config.json keeps the config's log.verbose, and the resume prints it.
    assert json.loads((workdir / "config.json").read_text())["log"]["verbose"] == 1
    assert fit.main(["--resume", str(workdir), "--set", "train.epochs=3"]) == 0
    out, err = capsys.readouterr()
    assert "epochs 3-3 of 3 (resuming)" in out
    # stderr is no terminal here, as in a log file or a batch job: one line per epoch, not a bar redrawn in place
    assert "Epoch 3/3" in err and "val_loss" in err
    assert not any(code in err for code in ("\x1b[", "\x08", "\r")), repr(err[-400:])
    history = (workdir / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3"]
    updates = [int(row.split(",")[history[0].split(",").index("updates")]) for row in history[1:]]
    assert updates == [2, 4, 6]  # the optimizer's count carried over: the same schedule, continued
    manifest = json.loads((workdir / "checkpoints" / "manifest.json").read_text())
    assert sorted(int(e) for e in manifest["epochs"]) == [1, 2, 3]
    assert json.loads((workdir / "config.json").read_text())["train"]["epochs"] == 3
    assert json.loads((workdir / "results.json").read_text())["epochs"] == 3


def test_greedy_and_pruned_label_each_candidate(tmp_path, capsys):
    model = linear_model()
    paths = [save_linear(model, kernel, tmp_path / f"epoch_{i:03d}.weights.h5")
             for i, kernel in enumerate((np.eye(3), 2 * np.eye(3), 3 * np.eye(3)), 1)]
    data = soups.batched(np.eye(3, dtype="float32"), np.arange(3), 3)
    soups.greedy(paths, model, data, progress=True)
    soups.pruned(paths, model, data, progress=True)
    soups.uniform(paths, progress=True)
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for results
    lines = err.splitlines()
    assert "[greedy] scoring epoch_001 on val (1/3)" in lines
    assert sum(line.startswith("[greedy] trying epoch_") and line.endswith("on val (2/2)") for line in lines) == 1
    assert any(line.startswith("[pruned] trying without epoch_") and "(1/3)" in line for line in lines)
    assert any(line.startswith("[average] reading epoch_003 (3/3)") for line in lines)
    assert all(line.startswith("[") for line in lines)  # no unlabelled bars


def test_soups_go_to_the_runs_soups_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    weights = str(run / "checkpoints" / "epoch_003.weights.h5")
    # Without RUN_DIR, a checkpoint of a run puts MonoSoup and cook outputs in RUN/soups (was RUN/checkpoints/soups).
    assert inputs.soups_dir(None, weights) == run / "soups"
    args = argparse.Namespace(output=None, run_dir=None, checkpoints=[weights])
    assert soup._output_dir(args) == run / "soups"
    assert inputs.soups_dir(str(run), None) == run / "soups"
    loose = tmp_path / "loose" / "w.weights.h5"
    assert inputs.soups_dir(None, str(loose)) == tmp_path / "loose" / "soups"
