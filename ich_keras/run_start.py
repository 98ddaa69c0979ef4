"""A run directory as fit starts it: the checks made before anything is written, the start files of a new run
(split lists, classes, config.json last), a resumed run's config, manifest and history, and the sweep of what a
killed fit left half-written.

    run = run_start.prepare(cfg, "runs/demo")     # reads only; raises a UserError naming what is wrong
    run_start.start_run_directory(run, resumed=False, manifest=run.manifest, rows=[], training_left=True)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ich_keras import (atomic, checkpoints, copies, data, folder_lock, image_files, resume, run_logging,
                       split_lists)
from ich_keras.config import (Config, apply_overrides, config_from_dict, config_to_dict, override_key,
                              parse_override)
from ich_keras.errors import UserError, relative_to_cwd
from ich_keras.rundir import SOURCE_KEY, Run, load_run, run_config, source_override


def _resolved(cfg: Config) -> Config:
    """The config with its paths made absolute: the run directory must not depend on the working directory."""
    init = str(Path(cfg.model.init).expanduser().resolve()) if cfg.model.init else ""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=data.resolve_source(cfg.data.source)),
                               model=dataclasses.replace(cfg.model, init=init))


# What a resume may change with --set (beside data.source, where the same images are now): more epochs on the same
# schedule, and how much it prints.
RESUME_KEYS = ("train.epochs", "log.verbose")


def resume_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config a resume continues with: the run's config.json, where only train.epochs may change (extending the
    schedule is well defined, see `ich_keras.train.extended`), log.verbose (what it prints) and data.source (where the
    same images are now); any other key would change what the saved state means, unless --set gives its stored value
    (the start's command repeated with --resume)."""
    source, rest = source_override(overrides)
    stored = run_config(run_dir / "config.json")
    changes = [o for o in rest if override_key(o) in RESUME_KEYS]
    for override in rest:
        if override not in changes and not _repeats(stored, override):
            raise UserError(f"--resume continues the run with its own config.json; only --set train.epochs=N "
                            f"(more epochs on the same schedule), --set log.verbose=0|1|2 (what it prints) and "
                            f"--set {SOURCE_KEY}=DIR (where its images are now) may change. "
                            f"Received: --set {override}")
    cfg = run_config(run_dir / "config.json", changes)  # a repeated value changes nothing
    if source is None:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source))


def _repeats(stored: Config, override: str) -> bool:
    """Whether a --set gives the run's own value (compared as the config holds it: typed, model.init resolved as
    the start resolved it), so that the start's command repeated with --resume is a no-op there."""
    (section, name), value = parse_override(override)
    if (section, name) == ("model", "init") and value:
        return Path(value).expanduser().resolve() == Path(stored.model.init)
    try:
        return config_from_dict(apply_overrides(config_to_dict(stored), [override])) == stored
    except UserError:  # an unknown key or a wrong value: not the run's own
        return False


def check_startable(workdir: Path) -> None:
    """A new run may go where no run is, or where one never finished an epoch (a failed start); never into a folder
    that holds anything else (a project's files, a data folder), which it would write over or delete."""
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"The --workdir is a file; a run directory is a folder: pick a new folder's path (the config "
                        f"file goes to --config). Received: workdir={str(workdir)!r}")
    if (workdir / resume.STATE_FILE).exists():
        raise UserError(f"The run directory already holds a run with finished epochs; continue it with --resume "
                        f"or pick another --workdir. Received: workdir={str(workdir)!r}")
    foreign = not_a_run_start(workdir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"The --workdir holds files that no run start wrote ({shown}): a new run goes into a new or "
                        f"empty folder, or over a start that never finished an epoch, so as not to write over or "
                        f"delete them. Pick another --workdir. Received: workdir={str(workdir)!r}")
    check_no_checkpoints_without_state(workdir)


def not_a_run_start(workdir: Path) -> list[str]:
    """What in `workdir` fit would write over or that shows it is no run's start (or a start that failed): folders
    of other names (a project's, a data split's class folders), other files in checkpoints/, a config.json that is
    not a run's, or a run's later files (history, results) without a run's config.json. Other plain files (a log
    the shell opened for fit's output, .DS_Store) are left alone by fit, and allowed."""
    if not workdir.is_dir():
        return []
    folders = {p.name for p in workdir.iterdir() if p.is_dir()}
    foreign = sorted(folders - RUN_ENTRIES)
    folder = workdir / checkpoints.CHECKPOINT_DIR
    if folder.is_dir():
        foreign += sorted(f"{checkpoints.CHECKPOINT_DIR}/{p.name}" for p in folder.iterdir()
                          if not (p.name == checkpoints.MANIFEST or p.name.startswith(".tmp-")
                                  or checkpoints.is_checkpoint_file(p.name)))
    if (workdir / "config.json").is_file():
        if not _is_run_config(workdir):
            foreign.append("config.json (not a run's)")
    else:  # written after config.json: without it, someone else's
        foreign += [name for name in (resume.HISTORY_FILE, "results.json") if (workdir / name).exists()]
    return foreign


def _is_run_config(workdir: Path) -> bool:
    """Whether workdir/config.json looks like one fit wrote (this version's or an earlier one's): a JSON object with
    the data, model and train tables, beside the classes and split lists written before it."""
    try:
        saved = atomic.read_json(workdir / "config.json")
    except UserError:
        return False
    tables = isinstance(saved, dict) and all(isinstance(saved.get(t), dict) for t in ("data", "model", "train"))
    return tables and (workdir / "classes.json").is_file() and (workdir / "splits").is_dir()


def check_no_checkpoints_without_state(workdir: Path) -> None:
    """Only epoch 1 can be on record without the run state (a kill between the checkpoint and the state writes:
    redoing the epoch loses nothing more). A later epoch, in the manifest or as a checkpoint file, means finished
    epochs whose state is gone (state/ deleted, say), and a start from epoch 0 would delete their checkpoints as
    unreferenced: refused."""
    folder = workdir / checkpoints.CHECKPOINT_DIR
    files = [p.name for p in folder.glob("epoch_*.weights.h5") if p.name != checkpoints.checkpoint_name(1)]
    epochs = [int(e) for e in checkpoints.read_manifest(workdir)["epochs"] if int(e) > 1]
    if files or epochs:
        raise UserError(
            f"The run directory holds checkpoints of finished epochs but no run state ({resume.STATE_FILE}): they "
            f"cannot be resumed, and starting over would delete them. Move {folder} elsewhere first, or pick "
            f"another --workdir. Received: workdir={str(workdir)!r}, "
            + (f"checkpoint={sorted(files)[-1]!r}" if files else f"epochs in the manifest up to {max(epochs)}")
        )


def state_stamp(workdir: Path) -> tuple[int, int] | None:
    """(modification time, size) of the run state, or None without one: how a fit sees whether another wrote it."""
    try:
        stat = (workdir / resume.STATE_FILE).stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def check_inputs(cfg: Config) -> None:
    """What a config's run needs and can be checked without reading data: a model that takes the image size, the
    data source and the initial weights. Raises a UserError saying what to provide."""
    from ich_keras import models  # the registry imports every architecture; only now is it needed

    models.check(cfg.model.name, cfg.data.image_size, "data.image_size")
    problems = []
    source = Path(cfg.data.source).expanduser()
    named = cfg.data.source == data.DIGITS or cfg.data.source.startswith("tfds:")  # not paths
    if not named and not source.is_dir():
        what = "is a file, not a folder" if source.exists() else f"does not exist{relative_to_cwd(source)}"
        problems.append(f"data.source={cfg.data.source!r} {what}: give an ImageFolder DIR/{{train,val,test}}/<class>/"
                        f"<images> (val/ and test/ optional) with --set data.source=DIR")
    if cfg.model.init and (problem := _init_problem(cfg)):
        problems.append(problem)
    if problems:
        raise UserError("Cannot start the run:\n  " + "\n  ".join(problems))


def check_init(cfg: Config) -> None:
    """Raises a UserError when `model.init` is set and is not a Keras weights file there."""
    if cfg.model.init and (problem := _init_problem(cfg)):
        raise UserError(f"Cannot start the run: {problem}")


def _init_problem(cfg: Config) -> str | None:
    """What is wrong with the file `model.init` names, if anything; reads only the names of its arrays."""
    from ich_keras import models
    from ich_keras.init_weights import check_init_file

    init = Path(cfg.model.init).expanduser()
    if not init.is_file():
        what = "is a folder, not a .weights.h5 file" if init.is_dir() else f"does not exist{relative_to_cwd(init)}"
        published = models.IMAGENET_WEIGHTS.get(cfg.model.name)
        convert = (f"convert ImageNet weights ({published}) with `python -m ich_keras.convert --model "
                   f"{cfg.model.name} --checkpoint model.safetensors --output FILE.weights.h5` (README: pretrained "
                   f"weights), " if published else f"{cfg.model.name} has no published ImageNet weights: ")
        return (f"model.init={cfg.model.init!r} {what}: {convert}name a checkpoint or soup, or --set model.init='' "
                f"to train from scratch")
    try:
        check_init_file(init, cfg.model.name)
    except UserError as error:
        return f"model.init: {error}"
    return None


def prepare(cfg: Config, workdir: str | Path) -> Run:
    """Every check of a new run that reads only: the directory, the model name, the init file, the data scan.

    Returns:
        The `Run` as it will be written (resolved config, splits, empty manifest); nothing is on disk yet.
    """
    workdir = Path(workdir)
    check_startable(workdir)
    if (workdir / "config.json").exists():
        print(f"{workdir} holds a run that never finished an epoch: starting it again")
    check_inputs(cfg)  # before the data scan, on the paths as written (relative ones are read from here)
    cfg = _resolved(cfg)
    splits = data.build_splits(cfg.data, progress=cfg.log.verbose > 0)
    return Run(workdir, cfg, splits, checkpoints.empty_manifest(cfg.checkpoint.keep))


def load_resumed(workdir: Path, source: str) -> Run:
    """The run to resume, reading its images from `source`; a missing image fails before anything is written."""
    run_info = load_run(workdir, source)
    for split in data.SPLITS:
        run_info.image_source(split)
    _note_classes_added_since(run_info)
    return run_info


def _note_classes_added_since(run_info: Run) -> None:
    """Prints the class folders of the data folder's train/ that the run does not know (added since it started): a
    resume trains on the run's own split lists, without them."""
    train = Path(run_info.config.data.source) / "train"
    if not train.is_dir():
        return
    added = sorted(entry.name for entry in train.iterdir() if entry.is_dir() and not image_files.hidden(entry.name)
                   and entry.name not in run_info.class_names)
    if added:
        print(f"Note: {train} holds {len(added)} class folder(s) this run does not know ({', '.join(added[:3])}"
              f"{', ...' if len(added) > 3 else ''}): a resume trains on the run's own split lists and classes; a new "
              f"run would take them", flush=True)


def write_start(run: Run) -> None:
    """Writes the run directory's start: split lists, classes.json, bad_images.txt, then config.json."""
    run.path.mkdir(parents=True, exist_ok=True)
    split_lists.write_splits(run.path, run.splits)
    if run.splits.bad_images:
        print(f"Skipped {len(run.splits.bad_images)} unreadable image(s); listed in {run.path / 'bad_images.txt'}")
    if run.splits.left_out:
        read = ", ".join(sorted(image_files.IMAGE_SUFFIXES))
        print(f"Left out {image_files.describe_left_out(run.splits.left_out)} (read: {read})")
    near_copies = run.config.data.near_copies
    advice = copies.copy_advice(near_copies)
    closing_advice = f" ({advice})" if advice else ""  # a parenthesis closing a sentence, or nothing
    kept = {split: n for split, n in run.splits.kept_with_copies.items() if n}
    if kept:
        drawn = " and ".join(f"{n} image(s) drawn for {split}" for split, n in kept.items())
        print(f"{drawn} stayed in train with their copies: a carved split takes no copy of a train "
              f"image{closing_advice}")
    if run.splits.same_images:
        groups = run.splits.same_images
        print(f"Warning: {len(groups)} group(s) of copies of one picture ({copies.copy_kinds(near_copies)}) sit in "
              f"two splits or under two classes (e.g. {' = '.join(groups[0])}): a test or val image also trained on "
              f"inflates its score, and one picture with two labels is noise; look at them and remove the "
              f"copies{closing_advice}. Listed in {run.path / split_lists.SAME_IMAGES}")
    # config.json last: its presence marks a complete run start.
    atomic.write_json(run.path / "config.json", config_to_dict(run.config))


# What fit writes at the top of a run directory, where a user's export or predict may be writing beside them; in the
# order fit's closing summary lists them.
RUN_FILES = ("config.json", "classes.json", "bad_images.txt", split_lists.SAME_IMAGES, split_lists.TRAIN_FINGERPRINTS,
             resume.HISTORY_FILE, "results.json")
# Every name fit writes at the top of a run directory (its temporary files aside).
RUN_ENTRIES = {*RUN_FILES, "splits", checkpoints.CHECKPOINT_DIR, Path(resume.STATE_FILE).parts[0],
               run_logging.TENSORBOARD_DIR, run_logging.WANDB_DIR, folder_lock.LOCK}


def _remove_leftovers(workdir: Path) -> None:
    """Deletes half-written temporary files a killed fit left behind (state/ can hold hundreds of MB of them): all of
    them in the folders only fit writes, only those of its own files at the top."""
    temps = [t for folder in ("state", checkpoints.CHECKPOINT_DIR, "splits") for t in (workdir / folder).glob(".tmp-*")]
    temps += [t for name in RUN_FILES for t in workdir.glob(f".tmp-{name}-*")]
    for temp in temps:
        temp.unlink(missing_ok=True)


def start_run_directory(run_info: Run, resumed: bool, manifest: dict, rows: list, training_left: bool) -> None:
    """The run directory as training starts: a new run's start, or a resumed run's config, manifest and history."""
    workdir = run_info.path
    if resumed:  # the schedule may have been extended: config.json says how many epochs the run now has
        saved = atomic.read_json(workdir / "config.json")  # and keeps data.source: --set data.source is one command's
        saved["train"]["epochs"] = run_info.config.train.epochs
        atomic.write_json(workdir / "config.json", saved)
    else:
        write_start(run_info)
    if training_left:  # a finished run extended: its results are of the shorter schedule, and mark a sweep's point done
        (workdir / "results.json").unlink(missing_ok=True)
    _remove_leftovers(workdir)
    # A kill between an epoch's manifest write and its state write leaves a newer manifest and files behind: the
    # state's copy is the truth.
    checkpoints.write_manifest(workdir, manifest)
    checkpoints.delete_unreferenced(workdir, manifest)
    resume.write_history(workdir, rows)
