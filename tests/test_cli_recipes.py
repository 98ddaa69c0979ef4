"""Uniform commands: soup sub-commands, [soup] / [analysis] recipes in TOML (table < --set < flag), unknown keys
named, and a training config that holds recipes still loads for fit. Nothing here trains or builds a model."""

import pytest

from ich_keras import analyze, cli, soup
from ich_keras.analysis.runner import AnalysisOptions
from ich_keras.config import config_from_dict, load_config
from ich_keras.errors import UserError
from ich_keras.soups.runner import SoupOptions, check_recipe
from ich_keras.soups.registry import LABELS, METHODS

RECIPE = """
[model]
name = "test_coatnet"

[soup]
methods = ["greedy", "uniform"]
greedy_metric = "f1"
recalibrate_bn = true
alphas = [0, 1]

[analysis]
split = "test"
cka_examples = 0
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def _cook_args(*argv):
    return soup.parser().parse_args(["cook", *argv])


def test_soup_recipe_then_set_then_flags(recipe):
    given = cli.recipe(SoupOptions, "soup", _cook_args("runs/x", "--config", str(recipe)))
    assert given == {"methods": ("greedy", "uniform"), "greedy_metric": "f1", "recalibrate_bn": True,
                     "alphas": (0.0, 1.0)}
    args = _cook_args("runs/x", "--config", str(recipe), "--set", "soup.accept=gt", "--set", "soup.greedy_metric=loss",
                      "--no-recalibrate-bn", "--pruned", "--alphas", "0.5")
    given = cli.recipe(SoupOptions, "soup", args)
    assert given == {"methods": ("pruned",), "greedy_metric": "loss", "accept": "gt", "recalibrate_bn": False,
                     "alphas": (0.5,)}
    SoupOptions(**given)  # every key is a field


def test_every_method_has_its_flag():
    for method in METHODS:
        args = _cook_args(cli.flag(method))
        assert args.methods == [method]
    assert set(LABELS) >= set(METHODS)


def test_bare_run_dir_means_cook_and_help_lists_sub_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        soup.main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert all(f"    {name}" in printed for name in soup.COMMANDS)
    # No run directory, no --config: cook is what ran, and it says what is missing.
    with pytest.raises(SystemExit) as exit_info:
        cli.run(soup.main, ["--uniform"])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    assert "Pass a run directory or --config" in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["--set", "soup.greedy=1"], "'soup.greedy'"),
    (["--set", "soup.learned_epochs=three"], "soup.learned_epochs"),
    (["--set", "train.epochs=3"], "soup.KEY=VALUE, or data.source=DIR"),
])
def test_soup_recipe_mistakes_are_named(tmp_path, capsys, argv, named):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(soup.main, ["cook", str(tmp_path), *argv])
    assert exit_info.value.code == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


@pytest.mark.parametrize("alphas", [(), (0.0, float("nan")), (float("inf"),)])
def test_interpolate_without_finite_alphas_is_refused(alphas):
    # soup.alphas = [] cooked the soup without its WiSE-FT curve, and not a word; a NaN alpha scored NaN outputs.
    with pytest.raises(UserError, match=r"--interpolate needs one or more finite --alphas"):
        check_recipe(SoupOptions(methods=("uniform",), interpolate=True, pretrained="w0.weights.h5", alphas=alphas))


def test_unknown_key_in_soup_table_is_named(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text("[soup]\ngredy_metric = 'f1'\n")
    with pytest.raises(SystemExit):
        cli.run(soup.main, [str(tmp_path), "--config", str(path)])
    err = capsys.readouterr().err
    assert "'soup.gredy_metric'" in err and "greedy_metric" in err


def test_analysis_recipe_is_read_and_checked(recipe, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[analysis]\nsplits = 'test'\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(analyze.main, [str(tmp_path), "--config", str(bad)])
    assert exit_info.value.code == cli.USER_ERROR_STATUS and "'analysis.splits'" in capsys.readouterr().err
    # A good recipe passes the check and the command goes on to the run directory, which is not one.
    with pytest.raises(SystemExit):
        cli.run(analyze.main, [str(tmp_path), "--config", str(recipe), "--set", "analysis.batch_size=4"])
    assert "Not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        analyze.main([str(tmp_path), "--set", "train.epochs=2"])
    assert exit_info.value.code == 2 and "analysis.KEY=VALUE, or data.source=DIR" in capsys.readouterr().err
    assert {"split", "cka_examples", "output"} <= set(AnalysisOptions.__dataclass_fields__)


def test_training_config_with_recipes_still_loads_for_fit(recipe):
    assert load_config(recipe) == config_from_dict({"model": {"name": "test_coatnet"}})
