"""Every config file of every group composes; the shipped conf is the one the package finds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
from omegaconf import OmegaConf

from speedtrain.config import compose_config, config_dir
from tests.conftest import REPO

# conf/sweep holds W&B sweep files and conf/hydra Hydra's own groups (hydra/launcher): not groups of the job config
GROUPS = sorted(p.name for p in config_dir().iterdir()
                if p.is_dir() and not p.name.startswith("_") and p.name not in ("sweep", "hydra"))
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


def test_wheel_ships_every_config_and_module(tmp_path):
    """An installed (non-editable) speedtrain has every module and the same configs as train.py."""
    src = tmp_path / "checkout"  # build a copy: building in the repository would write build/ and egg-info there
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / item, src / item)
    for item in ("conf", "src"):
        shutil.copytree(REPO / item, src / item, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    # --no-build-isolation: the installed setuptools and wheel (the dev extra's), not a fresh build environment
    # downloaded from the package index: no network, ~5 s less
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("speedtrain-*.whl")
    shipped = {n.removeprefix("speedtrain/conf/") for n in zipfile.ZipFile(wheel).namelist()
               if n.startswith("speedtrain/conf/") and n.endswith(".yaml")}
    in_repo = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert shipped == in_repo and "experiment/baseline.yaml" in shipped
    modules = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py") and not n.startswith("speedtrain/conf/")}
    in_src = {str(p.relative_to(REPO / "src")) for p in (REPO / "src").rglob("*.py")}
    assert modules == in_src and "speedtrain/distill/losses.py" in modules


def test_teacher_experiment(tmp_path):
    cfg = compose_config(["+experiment=teacher", f"paths.output_dir={tmp_path}"])
    assert cfg.model.source == "minilm" and cfg.tokenizer.pretrained == "minilm"
    assert cfg.data.max_length == 64 and cfg.trainer.max_epochs == 4 and cfg.module.optimizer.lr == 5e-4
    assert cfg.data.group_by_length is True and cfg.model.dropout == 0.0 and cfg.model.freeze_embeddings is True


def test_distill_experiment_and_stage1_config(tmp_path):
    """+experiment=distill composes; its stage 1 gets the teacher's model, tokenizer and hyperparameters."""
    from speedtrain.distill.teacher import teacher_run_config

    cfg = compose_config(["+experiment=distill", f"paths.output_dir={tmp_path}"])
    assert cfg.module._target_ == "speedtrain.lit.distill.DistillModule" and cfg.distill.loss.temperature == 1.0
    assert cfg.distill.intermediate.layer_map == [[0, 0], [1, 3], [2, 6]] and cfg.distill.augment.copies == 2
    assert cfg.teacher.path is None and cfg.teacher.source == "minilm"
    assert cfg.model.family == "static" and cfg.model.init == "teacher"  # the frontier's winner, from the teacher
    stage1 = teacher_run_config(cfg, tmp_path / "teacher")
    assert stage1.module._target_ == "speedtrain.lit.classifier.ClassifierModule" and stage1.distill is None
    assert stage1.model.source == "minilm" and stage1.tokenizer.pretrained == "minilm"
    assert stage1.data.batch_size == 32 and stage1.data.max_length == 64 and stage1.trainer.max_epochs == 4
    assert stage1.module.optimizer.lr == 5e-4 and stage1.paths.output_dir == str(tmp_path / "teacher")
    assert stage1.callbacks.model_checkpoint.dirpath == str(tmp_path / "teacher" / "checkpoints")
    assert "loss" not in stage1.module


def test_stage1_takes_more_epochs_on_small_data_and_keeps_its_key_where_that_changes_nothing(tmp_path):
    """teacher.min_steps: 490 texts of batch 32 are 16 steps an epoch, so 4 epochs become 32; the teacher key
    counts the epochs made, not min_steps itself."""
    from speedtrain.distill.teacher import teacher_key, teacher_run_config
    from speedtrain.trainer import fit_epochs

    stage1 = teacher_run_config(compose_config(["+experiment=distill", f"paths.output_dir={tmp_path}"]), tmp_path)
    assert stage1.trainer.min_steps == 500 and stage1.trainer.max_epochs == 4
    assert fit_epochs(stage1, 490) == 32 and fit_epochs(stage1, 4486) == 4
    assert teacher_key(stage1, "d", fit_epochs(stage1, 4486)) == teacher_key(stage1, "d", 4)
    assert teacher_key(stage1, "d", fit_epochs(stage1, 490)) != teacher_key(stage1, "d", 4)


def test_teacher_pooling_mean_is_its_own_teacher_and_cls_keeps_the_key_of_teachers_cached_before(tmp_path):
    from omegaconf import OmegaConf

    from speedtrain.distill.teacher import teacher_key, teacher_run_config

    def key(*overrides):
        cfg = compose_config(["+experiment=distill", f"paths.output_dir={tmp_path}", *overrides])
        return teacher_key(teacher_run_config(cfg, tmp_path), "d", 4)

    stage1 = teacher_run_config(compose_config(["+experiment=distill", f"paths.output_dir={tmp_path}"]), tmp_path)
    assert stage1.model.pooling == "cls"
    OmegaConf.set_struct(stage1, False)
    del stage1.model["pooling"]  # a config from before teacher.pooling existed
    assert teacher_key(stage1, "d", 4) == key() == key("teacher.pooling=cls") != key("teacher.pooling=mean")


def test_a_static_student_reads_the_teachers_vocabulary_only_with_a_teacher(tmp_path):
    """model.vocabulary=teacher: a distillation run's student tokenizer is the teacher's own (its folder when given);
    a run without a teacher, a user's own tokenizer=pretrained and model.vocabulary=data keep the tokenizer group."""
    from speedtrain.builders import student_tokenizer
    from speedtrain.errors import UserError

    out = f"paths.output_dir={tmp_path}"
    distill = ["+experiment=distill", "model=static", "model.vocabulary=teacher", out]
    assert student_tokenizer(compose_config(distill)) == {"pretrained": "minilm"}
    assert student_tokenizer(compose_config([*distill, f"teacher.path={tmp_path}"])) == {"pretrained": str(tmp_path)}
    own = compose_config([*distill, "tokenizer=pretrained", "tokenizer.pretrained=bert-base-uncased"])
    assert student_tokenizer(own) == {"pretrained": "bert-base-uncased"}
    data = student_tokenizer(compose_config(["+experiment=distill", "model=static", "model.vocabulary=data", out]))
    baseline = student_tokenizer(compose_config(["+experiment=baseline", "model=static", "model.vocabulary=teacher",
                                                 out]))
    assert data == baseline and data["vocab_size"] == 5000 and "pretrained" not in data
    with pytest.raises(UserError, match="model.vocabulary='theirs' must be 'data' .* or 'teacher'"):
        student_tokenizer(compose_config([*distill, "model.vocabulary=theirs"]))
