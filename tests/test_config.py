"""Every config file of every group composes; the shipped conf is the one the package finds."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from speedtrain.config import compose_config, config_dir

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and not p.name.startswith("_"))
CHOICES = [
    (group, f.stem)
    for group in GROUPS
    for f in sorted((config_dir() / group).glob("*.yaml"))
]
REQUIRED = {
    ("data", "files"): ["data.train=x.csv"],
    ("data", "hub"): ["data.name=ag_news"],
    ("tokenizer", "pretrained"): ["model=pretrained"],  # the tokenizer of the pretrained model
}


def test_all_groups_present():
    expected = {"data", "tokenizer", "model", "teacher", "trainer", "logger", "experiment", "paths", "debug", "callbacks"}
    assert expected <= set(GROUPS)


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_composes(group, choice, tmp_path):
    option = f"+experiment={choice}" if group == "experiment" else f"{group}={choice}"
    cfg = compose_config([option, f"paths.output_dir={tmp_path}", *REQUIRED.get((group, choice), [])])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["paths"]["output_dir"] == str(tmp_path)
    if group in ("data", "model", "trainer"):
        assert "_target_" in (resolved[group]["source"] if group == "data" else resolved[group])


def test_baseline_experiment(tmp_path):
    cfg = compose_config(["+experiment=baseline", f"paths.output_dir={tmp_path}"])
    assert cfg.task_name == "baseline"
    assert cfg.model.hidden_size == 128 and cfg.model.num_hidden_layers == 2 and cfg.model.max_length == 32
    assert cfg.data.max_length == 32 and cfg.tokenizer.vocab_size == 5000
    assert cfg.logger.wandb.group == "baseline"


def test_bert_mini_shape(tmp_path):
    cfg = compose_config(["model=bert_mini", f"paths.output_dir={tmp_path}"])
    assert (cfg.model.num_hidden_layers, cfg.model.hidden_size, cfg.model.num_attention_heads) == (4, 256, 4)


def test_conf_is_packaged():
    # train.py's conf/ and the installed package's configs are the same files
    assert (config_dir() / "train.yaml").is_file()
    assert (config_dir() / "experiment" / "baseline.yaml").is_file()


def test_teacher_experiment(tmp_path):
    cfg = compose_config(["+experiment=teacher", f"paths.output_dir={tmp_path}"])
    assert cfg.model.source == "minilm" and cfg.tokenizer.pretrained == "minilm"
    assert cfg.data.max_length == 64 and cfg.trainer.max_epochs == 6 and cfg.module.optimizer.lr == 3e-4
