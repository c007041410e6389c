"""Settings objects (strdiffusion/settings/jobs.py) and the options derived from them (strdiffusion/settings/fields.py, strdiffusion/stages/options.py):
one source for each stage's option names, defaults and config keys."""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from importlib import resources

import pytest
import yaml

from strdiffusion.core.sde import IRSDE
from strdiffusion.io.errors import UserError
from strdiffusion.models import checkpoints as checkpoints
from strdiffusion.settings.config import validate
from strdiffusion.settings.fields import _scalar, command_line, from_config, to_argv
from strdiffusion.settings.jobs import (
    JOBS,
    DataSettings,
    ModelSettings,
    RunSettings,
    SamplerSettings,
    SDESettings,
    ShardSettings,
    TrainSettings,
    job_options,
)
from strdiffusion.settings.methods import NETWORKS
from strdiffusion.stages import inpaint as inpaint_stage
from strdiffusion.stages import train as train_stage
from strdiffusion.stages.options import add_arguments, from_parsed


@pytest.fixture(scope="module")
def config(repo_root):
    return validate(yaml.safe_load((repo_root / "config" / "config.yaml").read_text()))


def _flat_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            yield from _flat_fields(hints[f.name])
        else:
            yield f


def _parse(cls, argv):
    p = argparse.ArgumentParser()
    add_arguments(p, cls)
    return from_parsed(cls, p.parse_args(argv))


@pytest.mark.parametrize("net", NETWORKS)
def test_train_settings_round_trip_through_the_command_line(config, net):
    s = TrainSettings.from_config(config, net=net)
    assert _parse(TrainSettings, shlex.split(command_line(to_argv(s)))) == s
    t = config["train"]
    assert (s.lr, list(s.betas)) == ((t["critic_lr"], t["critic_betas"]) if net == "critic" else (t["lr"], t["betas"]))
    assert (s.sde.T, s.model.nf, s.size, s.sigma) == (config["sde"]["T"], config["model"]["nf"], config["image_size"],
                                                      config["structure"]["sigma_train"])


def test_every_config_setting_survives_rendering_and_parsing(config):
    cfg = {**config, "sampling": {**config["sampling"], "autocast": "bf16", "compile": True, "switch": 1}}
    for cls in (SamplerSettings, RunSettings):
        s = from_config(cls, cfg)
        assert _parse(cls, shlex.split(command_line(to_argv(s)))) == s
    switch = from_config(SamplerSettings, cfg).switch
    assert switch == 1.0 and isinstance(switch, float)
    folder = {"source": "folder", "path": "/data/my images", "test_path": "", "train_list": "", "test_list": "",
              "test_fraction": 0.25, "resize": "resize", "max_train": 3, "skip_bad_files": True, "n_test": 1,
              "masks": config["datasets"]["builtin"]["masks"]}
    s = from_config(DataSettings, {**config, "datasets": {"x": folder}}, dataset="x")
    argv = to_argv(s)
    assert "--test-path" not in argv and "--skip-bad-files" in argv  # empty defaults and off switches stay out
    assert _parse(DataSettings, shlex.split(command_line(argv))) == s
    assert shlex.split(command_line(argv))[argv.index("--path") + 1] == "/data/my images"  # quoted once


def test_settings_keys_are_config_keys_with_the_same_defaults():
    """Every ``key`` of a settings field names a property of the config schema; where the schema fills a
    default, the option has the same one (an option the schema leaves without default may be required)."""
    schema = yaml.safe_load(resources.files("strdiffusion").joinpath("settings/schemas/config.schema.yaml").read_text())

    def schema_node(path):
        node = schema
        for part in path.split("."):
            node = node["additionalProperties"] if part in ("{dataset}", "{method}") else node["properties"][part]
            while "$ref" in node:
                node = schema["$defs"][node["$ref"].split("/")[-1]]
        return node

    seen = 0
    for classes in JOBS.values():
        for cls in classes:
            for f in _flat_fields(cls):
                if f.metadata.get("key"):
                    node = schema_node(f.metadata["key"].replace("{split}", "test"))
                    if "default" in node:
                        default = node["default"]
                        assert (tuple(default) if isinstance(default, list) else default) == f.default, f.name
                    seen += 1
    assert seen > 40


def test_sde_defaults_live_in_one_place():
    assert IRSDE().settings() == dataclasses.asdict(SDESettings())
    assert checkpoints.default_ctor_kwargs("texture")["nf"] == ModelSettings().nf
    assert checkpoints.default_ctor_kwargs("critic")["ngf"] == ModelSettings().critic_ngf


def test_network_kinds_have_one_definition():
    assert checkpoints.NET_KINDS is NETWORKS
    assert tuple(train_stage.build_parser()._option_string_actions["--net"].choices) == NETWORKS
    actions = inpaint_stage.build_parser()._option_string_actions
    assert all(f"--{net}-checkpoint" in actions for net in NETWORKS)


def test_stage_command_lines_are_derived_from_the_settings():
    train_flags = train_stage.build_parser()._option_string_actions
    for f in _flat_fields(TrainSettings):
        assert "--" + f.name.replace("_", "-") in train_flags, f.name
    inpaint_flags = inpaint_stage.build_parser()._option_string_actions
    for cls in (ShardSettings, SamplerSettings, RunSettings):
        for f in dataclasses.fields(cls):
            assert (f"--{f.name.replace('_', '-')}" in inpaint_flags) == f.metadata.get("cli", True), f.name
    defaults = train_stage.parse_args(["--net", "irsde", "--images", "i", "--structure", "s", "--masks", "m", "--out", "o",
                                 "--state-dir", "d", "--iterations", "5"]).settings
    assert defaults == TrainSettings(iterations=5)


def test_train_settings_are_checked():
    with pytest.raises(UserError, match="fractions"):
        TrainSettings(iterations=10, milestones=(120.0,))
    with pytest.raises(UserError, match="two values"):
        TrainSettings(iterations=10, betas=(0.9,))
    with pytest.raises(UserError, match="--iterations must be >= 1"):
        TrainSettings(iterations=0)
    with pytest.raises(UserError, match="--T must be >= 1"):
        SDESettings(T=0)


def test_options_that_do_not_apply_are_neither_read_nor_rendered(config):
    """The folder options of a builtin data set stay at their defaults and off its command line, so that
    changing one does not change (and re-run) the job."""
    builtin = {**config["datasets"]["builtin"], "test_fraction": 0.5, "max_train": 3, "skip_bad_files": True}
    cfg = {**config, "datasets": {"builtin": builtin}}
    assert from_config(DataSettings, cfg, dataset="builtin") == DataSettings(size=config["image_size"],
                                                                             seed=config["seed"])
    assert job_options("data", cfg, dataset="builtin") == f"--source builtin --size {config['image_size']} --seed 0"
    masks = config["datasets"]["builtin"]["masks"]
    for protocol, changes in (("lama_medium", False), ("folder", True)):
        options = []
        for threshold in (128, 100):
            m = {**masks, "protocol": protocol, "source": "/masks", "threshold": threshold, "nvidia_source": "/nv"}
            cfg = {**config, "datasets": {"builtin": {**config["datasets"]["builtin"], "masks": m}}}
            options.append(job_options("masks generate", cfg, dataset="builtin"))
        assert (options[0] != options[1]) == changes, options
        assert ("--nvidia-source" in options[0]) is False and ("--source /masks" in options[0]) == changes
    pool = shlex.split(job_options("masks pool", config, dataset="builtin"))
    assert pool[pool.index("--protocol") + 1] == masks["train_protocol"] and "--source" not in pool


def test_job_options(config):
    shard = f"--shard-size {config['sampling']['shard_size']}"
    assert job_options("inpaint", config, dataset="builtin", method="telea") == shard  # no sampling options
    assert job_options("inpaint", config, dataset="builtin", method="strdiffusion").startswith(shard + " ")
    argv = shlex.split(job_options("inpaint", config, dataset="builtin", method="strdiffusion"))
    assert argv[argv.index("--T") + 1] == str(config["sde"]["T"]) and "--channels-last" in argv
    argv = shlex.split(job_options("tables", config, dataset="builtin"))
    assert argv[argv.index("--bins") + 1] == "10-20,20-30,30-40,40-50"
    assert "--reference" not in argv  # empty, as its default
    argv = shlex.split(job_options("structure", config, dataset="builtin", split="train"))
    assert argv == ["--sigma", str(config["structure"]["sigma_train"])]


def test_net_iterations_override_train_iterations_for_the_networks_they_name(config):
    cfg = validate({**config, "train": {**config["train"], "iterations": 700, "net_iterations": {"critic": 30}}})
    its = {net: shlex.split(job_options("train", cfg, dataset="builtin", net=net)) for net in NETWORKS}
    its = {net: int(argv[argv.index("--iterations") + 1]) for net, argv in its.items()}
    assert its == {net: 30 if net == "critic" else 700 for net in NETWORKS}
    bare = validate({**config, "train": {k: v for k, v in config["train"].items() if k != "net_iterations"}})
    assert bare["train"]["net_iterations"] == {}  # a config without the key: every network trains train.iterations
    assert {TrainSettings.from_config(bare, net=net).iterations for net in NETWORKS} == {config["train"]["iterations"]}
    with pytest.raises(UserError, match=r"train\.net_iterations\.textur.*unknown key"):
        validate({**config, "train": {**config["train"], "net_iterations": {"textur": 30}}})


# ---------------------------------------------------------------------------------------------
# every field of every stage's settings survives its command-line form and its stored record

def _settings_classes():
    from strdiffusion.settings import jobs, masks
    from strdiffusion.training.trainer import TrainJob

    found = {TrainJob}
    for module in (jobs, masks):
        for obj in vars(module).values():
            if dataclasses.is_dataclass(obj) and isinstance(obj, type) and any(
                    "help" in f.metadata for f in dataclasses.fields(obj)):
                found.add(obj)
    return sorted(found, key=lambda c: c.__name__)


SETTINGS_CLASSES = _settings_classes()


def _candidates(f, tp):
    """Values of field ``f`` (type ``tp``) other than its default, most plausible first."""
    is_list, elem = _scalar(tp)
    default = None if f.default is dataclasses.MISSING else f.default
    choices = f.metadata.get("choices")
    if choices:
        pool = [c for c in choices if c != default]
        return [(c,) for c in pool[:2]] if is_list else pool
    if elem is bool:
        return [True]
    if is_list:
        lists = {float: [(0.25, 0.5), (0.1,)], int: [(2, 3), (1,)],
                 str: [("a b", "c"), ("telea", "mean_fill"), ("10-20", "20-30")]}
        if elem in lists:
            return lists[elem]
        made = _made(elem)
        return [tuple(made[:2]), tuple(made[1:3])]
    if elem is int:
        return [v for v in ((default or 0) + 1, 2, 1, 5, 64) if v != default]
    if elem is float:
        return [v for v in ((default or 0.0) + 0.5, 0.5, 0.25, 2.0, 1.5) if v != default]
    if elem is str:
        return [v for v in ("a value with spaces", "auto", "x", "c") if v != default]
    return _made(elem)


def _made(elem) -> list:
    """Values of a field type built from text (a path, a bin), from the texts it accepts."""
    made = []
    for text in ("/tmp/a folder/with spaces", "relative/other folder", "0.1:0.2", "0.3:0.45", "half", "texture=t 1.pt",
                 '{"lama": {"name": "LaMa, big"}, "mat": {"name": "MAT", "resize": "bicubic"}}'):
        try:
            made.append(elem(text))
        except (UserError, ValueError, TypeError):
            continue
    return made


def _base(cls):
    """An object of ``cls`` with its required fields filled."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = _base(hints[f.name]) if f.metadata.get("nested") else _candidates(f, hints[f.name])[0]
    return cls(**values)


def _variants(obj):
    """(field path, object) for each command-line field of ``obj``, nested ones included, set to a value other
    than the base's where the settings accept one."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.metadata.get("nested"):
            for path, inner in _variants(getattr(obj, f.name)):
                yield f"{f.name}.{path}", dataclasses.replace(obj, **{f.name: inner})
            continue
        if not f.metadata.get("cli", True):
            continue
        accepted = None
        for value in _candidates(f, hints[f.name]):
            if value == getattr(obj, f.name):
                continue
            try:
                accepted = dataclasses.replace(obj, **{f.name: value})
                break
            except (UserError, ValueError):
                continue
        yield f.name, accepted


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_roundtrip_of_every_settings_field_through_options_and_records(cls):
    import json

    from strdiffusion.settings.fields import from_record, to_record

    base = _base(cls)
    unchanged = []
    for path, obj in [("(base)", base), *_variants(base)]:
        if obj is None:
            unchanged.append(path)
            continue
        argv = to_argv(obj, every=True)
        assert _parse(cls, shlex.split(command_line(argv))) == obj, f"{cls.__name__}.{path}: {argv}"
        assert from_record(cls, json.loads(json.dumps(to_record(obj)))) == obj, f"{cls.__name__}.{path}"
    assert unchanged == [], f"{cls.__name__}: no other accepted value tried for {unchanged}"


def test_roundtrip_check_fails_on_a_field_the_rendering_drops():
    base = _base(SETTINGS_CLASSES[0])
    for path, obj in _variants(base):
        if obj is not None and obj != base:
            argv = to_argv(obj, every=True)
            flag = "--" + path.rsplit(".", 1)[-1].replace("_", "-")
            dropped = argv[:argv.index(flag)] + argv[argv.index(flag) + (1 if argv.index(flag) + 1 == len(argv)
                                                                         or argv[argv.index(flag) + 1].startswith("--")
                                                                         else 2):]
            assert _parse(type(base), dropped) != obj
            return
    pytest.fail("no field to drop")
