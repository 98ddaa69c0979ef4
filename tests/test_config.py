"""Config: TOML -> frozen dataclasses, overrides, and errors that name the offending key."""

import dataclasses
import json
from pathlib import Path

import pytest

from ich_keras.config import Config, KeepRule, config_from_dict, config_to_dict, load_config
from ich_keras.errors import UserError

CONFIGS = Path(__file__).parents[1] / "configs"


def _write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.data.image_size >= 32


def test_paper_recipe_in_coatnet_configs():
    for name in ("coatnet0.toml", "coatnet2.toml"):
        t = load_config(CONFIGS / name).train
        assert t.batch_size * t.grad_accum_steps == 128
        assert (t.epochs, t.learning_rate, t.weight_decay, t.restart_epochs, t.restart_t_mul) == (
            50,
            1e-4,
            1e-3,
            3,
            1,
        )
        assert (t.min_learning_rate, t.global_clipnorm) == (0.0, 1.0)
        keep = load_config(CONFIGS / name).checkpoint.keep
        assert {(r.metric, r.mode, r.k) for r in keep} == {
            ("loss", "min", 8),
            ("accuracy", "max", 8),
            ("f1", "max", 8),
        }


def test_values_types_and_frozen(tmp_path):
    cfg = load_config(
        _write(
            tmp_path,
            '[data]\nsource = "x"\nimage_size = 64\n[train]\nlearning_rate = 1\n'
            '[checkpoint]\nkeep = [{metric = "f1", mode = "max", k = 2}]\n',
        )
    )
    assert cfg.data.source == "x" and cfg.data.image_size == 64
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.checkpoint.keep == (KeepRule("f1", "max", 2),)
    assert cfg.train.epochs == 50  # default kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3


def test_overrides_parse_toml_and_bare_words(tmp_path):
    cfg = load_config(
        _write(tmp_path, "[train]\nepochs = 5\n"),
        [
            "train.epochs=7",
            "model.name=coatnet_tiny",
            'data.source="digits"',
            "augment.flip=false",
            'checkpoint.keep=[{metric="loss", mode="min", k=1}]',
        ],
    )
    assert cfg.train.epochs == 7
    assert cfg.model.name == "coatnet_tiny" and cfg.data.source == "digits"
    assert cfg.augment.flip is False
    assert cfg.checkpoint.keep == (KeepRule("loss", "min", 1),)


def test_a_text_key_takes_a_value_that_reads_as_a_number(tmp_path):
    cfg = load_config(_write(tmp_path, ""), ["data.source=2024", "log.wandb_project=1e3", "model.init=0"])
    assert (cfg.data.source, cfg.log.wandb_project, cfg.model.init) == ("2024", "1e3", "0")
    with pytest.raises(UserError, match="data.image_size must be of type int. Received: data.image_size='big'"):
        load_config(_write(tmp_path, ""), ["data.image_size=big"])  # other keys keep their types
    # Python's spellings, which TOML reads as text: the error says how TOML writes them.
    with pytest.raises(UserError, match=r"train.learning_rate must be of type float \(TOML writes it 0.001, "):
        load_config(_write(tmp_path, ""), ["train.learning_rate=.001"])
    with pytest.raises(UserError, match=r"augment.flip must be of type bool \(TOML writes true, in lower case\)"):
        load_config(_write(tmp_path, ""), ["augment.flip=TRUE"])
    with pytest.raises(UserError, match=r"train.epochs must be of type int \(TOML writes it 5, without a point\)"):
        load_config(_write(tmp_path, ""), ["train.epochs=5."])


def test_json_round_trip():
    cfg = load_config(CONFIGS / "demo.toml")
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


# Bad inputs: each error names the culprit.


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    with pytest.raises(
        ValueError, match=r"train\.epoch'.*Allowed keys in section \[train\]: epochs, batch_size"
    ):
        load_config(_write(tmp_path, "[train]\nepoch = 3\n"))


def test_unknown_section_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"'trian'.*Allowed keys in the top level: data, augment, model"):
        load_config(_write(tmp_path, "[trian]\nepochs = 3\n"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[train]\nepochs = "3"\n', r"train\.epochs must be of type int.*'3' of type str"),
        ("[train]\nepochs = 3.5\n", r"train\.epochs must be of type int"),
        ("[augment]\nflip = 1\n", r"augment\.flip must be of type bool"),
        ("[train]\nlearning_rate = true\n", r"train\.learning_rate must be of type float"),
        ('[checkpoint]\nkeep = "loss"\n', r"checkpoint\.keep must be a list"),
        (
            "[checkpoint]\nkeep = [{metric = 'f1', mode = 'max', k = 2, patience = 3}]\n",
            r"checkpoint\.keep\[0\]\.patience",
        ),
    ],
)
def test_wrong_type_names_key(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs=0", r"train\.epochs must be >= 1\. Received: train\.epochs=0"),
        ("data.val_fraction=1.5", r"data\.val_fraction must be in \[0, 1\)"),
        ("train.precision=fp8", r"train\.precision must be one of .*Received: train\.precision='fp8'"),
        ('checkpoint.keep=[{metric="auc", mode="max", k=2}]', r"checkpoint\.keep\[0\]\.metric.*'auc'"),
        ('checkpoint.keep=[{metric="f1", mode="maximize", k=2}]', r"checkpoint\.keep\[0\]\.mode.*'maximize'"),
        # A mode the other way round would keep the worst epochs (mode defaults to "min": easy to leave out for f1).
        ('checkpoint.keep=[{metric="f1", k=2}]', r"checkpoint\.keep\[0\]\.mode must be \"max\" for f1.*'min'"),
        ('checkpoint.keep=[{metric="loss", mode="max", k=2}]', r"checkpoint\.keep\[0\]\.mode must be \"min\" for loss"),
        ('checkpoint.keep=[{metric="f1", mode="max", k=0}]', r"checkpoint\.keep\[0\]\.k must be >= 1"),
        ("train.distribution=model_parallel", r"train\.distribution.*'model_parallel'"),
        # Seeds as keras.utils.set_random_seed takes them (it refuses -1 and 2**32 only when training starts).
        ("train.seed=-1", r"train\.seed must be in \[0, 2\*\*32\)\. Received: train\.seed=-1"),
        ("train.seed=4294967296", r"train\.seed must be in \[0, 2\*\*32\)"),
        ("data.split_seed=-3", r"data\.split_seed must be in \[0, 2\*\*32\)\. Received: data\.split_seed=-3"),
        ("data.split_seed=4294967296", r"data\.split_seed must be in \[0, 2\*\*32\)"),
        ("train.restart_m_mul=-1.0", r"train\.restart_m_mul must be > 0.*Received: train\.restart_m_mul=-1\.0"),
        ("train.restart_m_mul=0", r"train\.restart_m_mul must be > 0"),
        # TOML reads inf and nan; inf passes every "> 0" range check, and warmup/restart epochs of inf ended in an
        # OverflowError traceback when the schedule was built.
        ("train.warmup_epochs=inf", r"train\.warmup_epochs must be a finite number\. Received: .*=inf"),
        ("train.restart_epochs=inf", r"train\.restart_epochs must be a finite number"),
        ("train.learning_rate=inf", r"train\.learning_rate must be a finite number"),
        ("train.weight_decay=nan", r"train\.weight_decay must be a finite number"),
        ("augment.mixup_alpha=inf", r"augment\.mixup_alpha must be a finite number"),
        ("train.weight_decay=-1", r"train\.weight_decay must be >= 0 .*Received: train\.weight_decay=-1\.0"),
    ],
)
def test_out_of_range_names_key(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, ""), [override])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs", r"section\.key=value\. Received: override='train\.epochs'"),
        ("epochs=3", r"section\.key\. Received: key='epochs'"),
        ("train.epochz=3", r"Unknown config key 'train\.epochz'"),
    ],
)
def test_bad_override_names_it(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        load_config(_write(tmp_path, ""), [override])


def test_missing_config_file_names_path(tmp_path):
    with pytest.raises(ValueError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_an_override_of_another_command_s_table_is_refused_naming_that_command(tmp_path):
    """fit would drop --set soup.KEY / analysis.KEY unread (a typo too); the tables in the file stay allowed."""
    path = _write(tmp_path, "[train]\nepochs = 3\n[soup]\nmethods = 1\n[analysis]\nsplits = 2\n")
    assert load_config(path, ["train.epochs=4"], passed_on=()).train.epochs == 4  # read by soup / analyze, not here
    with pytest.raises(UserError, match=r"\[soup\] is another command's table \(python -m ich_keras\.soup reads it\)"
                                        r"\. Received: --set soup\.no_such_option=3"):
        load_config(path, ["soup.no_such_option=3"], passed_on=())
    with pytest.raises(UserError, match=r"\[analysis\] .*python -m ich_keras\.analyze.* --set analysis\.bogus=true"):
        load_config(path, ["analysis.bogus=true"], passed_on=())
    # The sweep hands soup.KEY on to the soups it cooks (they check it); analysis.KEY it would drop.
    assert load_config(path, ["soup.methods=2"], passed_on=("soup",)).train.epochs == 3
    with pytest.raises(UserError, match=r"\[analysis\] is another command's table"):
        load_config(path, ["analysis.bogus=true"], passed_on=("soup",))


@pytest.mark.parametrize("data", [[1], "hello", 3])
def test_a_config_that_is_not_a_table_is_a_user_error(data):
    # A run's config.json edited into a list: every command that read it stopped with AttributeError: 'list' ... items.
    with pytest.raises(UserError, match=r"A config must be a table of sections"):
        config_from_dict(data)


def test_a_config_built_in_python_is_type_checked_like_a_table():
    # Built in a notebook, these passed to train.run, which wrote the run directory and then died in TensorFlow.
    from ich_keras.config import CheckpointConfig, DataConfig, TrainConfig

    cases = [(lambda: Config(train=TrainConfig(batch_size=8.0)), r"train.batch_size must be of type int"),
             (lambda: Config(train=TrainConfig(epochs=1.5)), r"train.epochs must be of type int"),
             (lambda: Config(data=DataConfig(image_size="32")), r"data.image_size must be of type int"),
             (lambda: Config(checkpoint=CheckpointConfig(keep=KeepRule())), r"checkpoint.keep must be a tuple"),
             (lambda: Config(checkpoint=CheckpointConfig(keep=[{"metric": "f1"}])),
              r"checkpoint.keep\[0\] must be a KeepRule")]
    for make, message in cases:
        with pytest.raises(UserError, match=message):
            make()
    # What Python spells another way is taken: a Path, numpy numbers, a list; config.json can store the result.
    np = pytest.importorskip("numpy")
    cfg = Config(data=DataConfig(source=Path("photos"), image_size=np.int64(32)),
                 train=TrainConfig(learning_rate=np.float32(0.5), epochs=np.int64(3)),
                 checkpoint=CheckpointConfig(keep=[KeepRule("f1", "max", 2)]))
    assert (cfg.data.source, cfg.data.image_size, cfg.train.epochs, cfg.train.learning_rate) == ("photos", 32, 3, 0.5)
    assert type(cfg.data.image_size) is int and type(cfg.train.learning_rate) is float
    assert cfg.checkpoint.keep == (KeepRule("f1", "max", 2),)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_a_numpy_bool_in_a_python_config_is_a_bool():
    np = pytest.importorskip("numpy")
    from ich_keras.config import AugmentConfig

    cfg = Config(augment=AugmentConfig(flip=np.bool_(False)))
    assert cfg.augment.flip is False  # "must be of type bool. Received: ... of type bool" before
