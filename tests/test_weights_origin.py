"""Which run a weights file came from (`ich_keras.weights_origin`): the rule the class check rests on."""

import json
from pathlib import Path

from ich_keras import weights_origin


def _run(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def test_the_run_a_checkpoint_was_kept_in_is_found_however_it_is_named(tmp_path, monkeypatch):
    # What monosoup and check take as their run when none is given, and cook as the home of loose --checkpoints.
    _run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert weights_origin.run_of("run/checkpoints/epoch_001.weights.h5") == Path("run")  # stored paths stay relative
    assert weights_origin.run_of("elsewhere/epoch_001.weights.h5") is None
    monkeypatch.chdir(tmp_path / "run/checkpoints")
    assert weights_origin.run_of("epoch_001.weights.h5") == tmp_path / "run"  # its folder is "." as given


def test_a_soup_comes_from_the_run_it_was_cooked_on(tmp_path):
    run, sweep_run = _run(tmp_path / "run"), _run(tmp_path / "sweep" / "lr_a")
    assert weights_origin.origin_run(run / "soups" / "greedy" / "soup.weights.h5") == run
    # --output elsewhere: the run that kept its first ingredient, from provenance.json (across runs too).
    for root, ingredient, expected in ((run, "checkpoints/epoch_003.weights.h5", run),
                                       (tmp_path / "sweep", "lr_a/checkpoints/epoch_001.weights.h5", sweep_run)):
        folder = tmp_path / "out" / expected.name / "uniform"
        folder.mkdir(parents=True)
        (folder / "provenance.json").write_text(json.dumps({"root": str(root), "ingredients": [{"path": ingredient}]}))
        assert weights_origin.origin_run(folder / "soup.weights.h5") == expected
    # Nothing says where these came from: a converted W0, a soup whose record is damaged.
    assert weights_origin.origin_run(tmp_path / "w0.weights.h5") is None
    damaged = tmp_path / "damaged" / "uniform"
    damaged.mkdir(parents=True)
    (damaged / "provenance.json").write_text('{"root": ')
    assert weights_origin.origin_run(damaged / "soup.weights.h5") is None
