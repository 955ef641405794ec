"""The job config: every shipped config parses, unknown keys and wrong types are errors, overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchglm.config import PRESETS, GLMConfig
from torchglm.train.config import (
    ConfigError,
    JobConfig,
    check_world,
    job_config_from_dict,
    load_job_config,
    override_options,
    read_yaml,
)
from torchglm.train.pretrain import build_blank_config, build_model_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "pretrain").glob("*.yaml"))
ORIGINAL_PRESETS = ("base", "large", "large-chinese", "roberta-large", "410m", "515m", "2b", "10b")


def test_every_original_preset_has_a_config():
    names = {path.stem for path in CONFIGS}
    assert set(ORIGINAL_PRESETS) | {"tiny"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_parses(path):
    job = load_job_config(path)
    assert job.model.preset in PRESETS
    config = build_model_config(job)
    blanks = build_blank_config(job)
    assert blanks.seq_length <= config.max_sequence_length
    assert job.train.global_batch_size % job.train.micro_batch_size == 0
    assert job.optim.weight_decay > 0 and job.optim.clip_grad == 1.0
    if path.stem in ORIGINAL_PRESETS:  # the original runs (tiny and glm-tiny-en are CPU runs of our own)
        assert job.model.preset == path.stem
        assert job.train.precision == "bf16" and job.parallel.activation_checkpointing
    # mirrors the dataclasses: re-reading the resolved YAML gives the same job
    assert job_config_from_dict(read_yaml_text(job.to_yaml())) == job


def read_yaml_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def test_original_optimizer_settings():
    base, large = load_job_config(_config("base")), load_job_config(_config("large"))
    assert (base.optim.lr, base.optim.betas, base.optim.eps, base.optim.weight_decay) == (4e-4, [0.9, 0.98], 1e-6, 0.1)
    assert (base.schedule.warmup_steps, base.schedule.decay_steps, base.schedule.min_lr_ratio) == (6000, 120000, 0.05)
    assert large.optim.lr == 2e-4 and large.schedule.warmup_steps == 8000 and large.train.global_batch_size == 1024
    ten_b = load_job_config(_config("10b"))
    assert ten_b.optim.betas == [0.9, 0.95] and ten_b.optim.eps == 1e-8 and ten_b.data.blanks["bert_prob"] == 0.5


def _config(name: str) -> Path:
    return next(p for p in CONFIGS if p.stem == name)


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field in config: 'optim.learning_rate'"):
        job_config_from_dict({"optim": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match=r"'optim.weight_decy'; did you mean 'optim.weight_decay'"):
        job_config_from_dict({"optim": {"weight_decy": 0.1}})
    with pytest.raises(ConfigError, match="unknown section .*'optimizer'"):
        job_config_from_dict({"optimizer": {}})
    with pytest.raises(ConfigError, match="unknown key .*model.overrides.*'hiden_size'; did you mean 'hidden_size'"):
        job_config_from_dict({"model": {"overrides": {"hiden_size": 8}}})
    with pytest.raises(ConfigError, match="unknown key .*data.blanks.*'bert_probability'"):
        job_config_from_dict({"data": {"blanks": {"bert_probability": 0.5}}})
    with pytest.raises(ConfigError, match="unknown option '--train.stepz'; did you mean '--train.steps'"):
        load_job_config(None, ["--train.stepz", "3"])
    with pytest.raises(ConfigError, match="unknown option '--trian.steps'"):
        load_job_config(None, ["--trian.steps", "3"])


def test_wrong_types_and_values_are_errors():
    with pytest.raises(ConfigError, match="train.steps must be int, got 'ten'"):
        job_config_from_dict({"train": {"steps": "ten"}})
    with pytest.raises(ConfigError, match="train.steps must be int, got True"):
        job_config_from_dict({"train": {"steps": True}})
    with pytest.raises(ConfigError, match="optim.betas must be a list"):
        job_config_from_dict({"optim": {"betas": 0.9}})
    with pytest.raises(ConfigError, match="train.precision must be one of"):
        job_config_from_dict({"train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match="train.steps must be > 0, got 0"):
        job_config_from_dict({"train": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"global_batch_size \(10\) is not a multiple of train.micro_batch_size"):
        job_config_from_dict({"train": {"global_batch_size": 10, "micro_batch_size": 4}})
    with pytest.raises(ConfigError, match="tp_size > 1 needs parallel.engine: fsdp"):
        job_config_from_dict({"parallel": {"engine": "deepspeed", "tp_size": 2}})
    assert job_config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0  # an int is a fine float
    assert isinstance(job_config_from_dict({"optim": {"lr": 1}}).optim.lr, float)


def test_constraints_in_the_types_name_field_value_and_bound():
    with pytest.raises(ConfigError, match=r"^parallel.tp_size must be > 0, got 0$"):
        job_config_from_dict({"parallel": {"tp_size": 0}})
    with pytest.raises(ConfigError, match=r"^schedule.warmup_steps must be >= 0, got -1$"):
        job_config_from_dict({"schedule": {"warmup_steps": -1}})
    with pytest.raises(ConfigError, match=r"^schedule.min_lr_ratio must be <= 1, got 1.5$"):
        job_config_from_dict({"schedule": {"min_lr_ratio": 1.5}})
    with pytest.raises(ConfigError, match=r"^parallel.zero_stage must be one of \[2, 3\], got 1$"):
        job_config_from_dict({"parallel": {"zero_stage": 1}})
    with pytest.raises(ConfigError, match=r"^train.precision must be one of \['fp32', 'bf16'\], got 'fp16'$"):
        job_config_from_dict({"train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match=r"optim.betas\[1\] must be float, got 'x'"):
        job_config_from_dict({"optim": {"betas": [0.9, "x"]}})
    with pytest.raises(ConfigError, match=r"train.steps must be int, got '10'"):  # strict: no str -> int
        job_config_from_dict({"train": {"steps": "10"}})
    with pytest.raises(ConfigError, match="optim must be a mapping, got 3"):
        job_config_from_dict({"optim": 3})
    # every problem at once, one line each
    with pytest.raises(ConfigError) as error:
        job_config_from_dict({"optim": {"lr": 0, "eps": -1.0}, "data": {"num_workers": -1}})
    assert str(error.value).splitlines() == [
        "data.num_workers must be >= 0, got -1",
        "optim.lr must be > 0, got 0",
        "optim.eps must be > 0, got -1.0",
    ]


def test_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\ntrain:\n  steps: 10\n")
    job = load_job_config(
        path,
        [
            "--optim.lr", "3e-4",  # YAML 1.1 reads this as a string: taken as a float
            "--optim.betas", "[0.9, 0.95]",
            "--train.steps=20",
            "--schedule.decay_steps", "null",
            "--model.overrides.hidden_size", "128",
            "--data.blanks.bert_prob", "0.5",
            "--checkpoint.resume", "latest",
        ],
    )  # fmt: skip
    assert job.optim.lr == 3e-4 and job.optim.betas == [0.9, 0.95] and job.train.steps == 20
    assert job.schedule.decay_steps is None and job.checkpoint.resume == "latest"
    assert job.model.overrides == {"hidden_size": 128} and job.data.blanks == {"bert_prob": 0.5}
    assert load_job_config(None) == JobConfig()
    with pytest.raises(ConfigError, match="needs a value"):
        load_job_config(None, ["--train.steps"])


def test_every_field_is_an_option_with_help():
    options = dict(override_options())
    assert "--optim.lr" in options and options["--optim.lr"].startswith("Peak learning rate")
    assert len(options) == sum(len(JobConfig.__dataclass_fields__[s].default_factory().__dict__) for s in
                               JobConfig.__dataclass_fields__)  # fmt: skip
    assert all(options.values())


def test_check_world():
    job = job_config_from_dict({"train": {"global_batch_size": 32, "micro_batch_size": 4}})
    assert check_world(job, 1) == (1, 8)
    assert check_world(job, 8) == (8, 1)
    with pytest.raises(ConfigError, match=r"not divisible by the data-parallel size \(3"):
        check_world(job, 3)
    tp = job_config_from_dict({"train": {"global_batch_size": 32, "micro_batch_size": 4}, "parallel": {"tp_size": 2}})
    assert check_world(tp, 4) == (2, 4)
    with pytest.raises(ConfigError, match=r"world size \(3\) is not a multiple of parallel.tp_size \(2\)"):
        check_world(tp, 3)


def test_preset_sizes_reach_the_model():
    job = load_job_config(_config("2b"))
    config = build_model_config(job)
    assert isinstance(config, GLMConfig) and (config.num_layers, config.hidden_size) == (36, 2048)


def test_read_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
