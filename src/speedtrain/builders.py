"""The run's parts from its config: the DataModule, the student and the LightningModule.

``train.py`` (through :mod:`speedtrain.fit`), ``speedtrain export`` and ``scripts/gpu_bench.py`` build them here, so
a benchmark measures the module a run trains.
"""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from speedtrain.config import instantiate_known
from speedtrain.data.datamodule import TextDataModule
from speedtrain.errors import UserError
from speedtrain.families import builder_config
from speedtrain.trainer import batch_plan, scaled_module_config, speed_options

DATAMODULE = "speedtrain.data.datamodule.TextDataModule"  # runs saved before data had a _target_


def build_datamodule(cfg: DictConfig) -> TextDataModule:
    """The DataModule of ``cfg.data`` (its ``_target_``) with the student tokenizer of ``cfg.tokenizer``."""
    node = cfg.data.copy()
    old = cfg.trainer.get("speed") or {}  # a run saved before the data settings moved out of trainer.speed
    with open_dict(node):
        node.setdefault("_target_", DATAMODULE)
        if "_target_" in (node.get("source") or {}):  # the DataModule calls the source in prepare()
            node.source.setdefault("_partial_", True)
        if "length_buckets" in old and "length_buckets" not in node:
            node.length_buckets = old.length_buckets
    return instantiate_known(node, tokenizer=student_tokenizer(cfg), cache_dir=cfg.paths.cache_dir, seed=cfg.seed,
                             on_device=data_on_device(cfg))


def student_tokenizer(cfg: DictConfig) -> dict:
    """The student's tokenizer settings: ``cfg.tokenizer``, or the teacher's own tokenizer (``{"pretrained": ...}``)
    when the model asks for the teacher's vocabulary (``model.vocabulary=teacher``, the static families) in a run
    with a teacher (``distill`` set, a teacher source or folder). Such a student starts its table from the teacher's
    vectors of every piece (``model.init=teacher``), words the training data never shows included."""
    settings = OmegaConf.to_container(cfg.tokenizer, resolve=True) if cfg.get("tokenizer") is not None else {}
    vocabulary = (cfg.get("model") or {}).get("vocabulary", "data")
    if vocabulary not in ("data", "teacher"):
        raise UserError(f"model.vocabulary={vocabulary!r} must be 'data' (a WordPiece vocabulary trained on the "
                        "training texts, the tokenizer group) or 'teacher' (the teacher's own word pieces)")
    teacher = cfg.get("teacher") or {}
    source = teacher.get("path") or teacher.get("source")
    if vocabulary == "teacher" and cfg.get("distill") is not None and source and not settings.get("pretrained"):
        return {"pretrained": str(source)}
    return settings


def data_on_device(cfg: DictConfig) -> bool:
    """``data.on_device``: ``auto`` is true on a GPU trainer (the whole tokenized data set lives there) and for a
    model family whose recipe asks for it (``model.recipe.on_device``: the static family, whose CPU step is shorter
    than a DataLoader's collate of its batch), false otherwise."""
    value = cfg.data.get("on_device", (cfg.trainer.get("speed") or {}).get("data_on_device", False))
    if value == "auto":
        recipe = (cfg.get("model") or {}).get("recipe") or {}
        return str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda") or bool(recipe.get("on_device", False))
    if not isinstance(value, bool):
        raise UserError(f"data.on_device={value!r} must be true, false or auto (on the device of a GPU trainer)")
    return value


def build_model(cfg: DictConfig, datamodule: TextDataModule):
    """The student of ``cfg.model`` (its ``family`` and ``recipe`` are for the experiments, not the builder), sized
    to the datamodule's tokenizer and labels."""
    return instantiate(
        builder_config(cfg.model),
        vocab_size=len(datamodule.tokenizer),
        num_labels=datamodule.num_labels,
        pad_token_id=datamodule.tokenizer.pad_token_id,
        id2label=dict(enumerate(datamodule.label_names)),
    )


def build_module(cfg: DictConfig, datamodule: TextDataModule, trainer: pl.Trainer, model=None,
                 **extra) -> tuple[pl.LightningModule, dict]:
    """The LightningModule of ``cfg.module`` around ``model`` (default: :func:`build_model`), with the learning
    rate scaled to the trainer's global batch and the trainer's speed switches.

    Args:
        extra: more module arguments (a DistillModule's loss, teacher, ...).

    Returns:
        The module, and the batch plan (global batch, scaled learning rate) that metrics.json records.
    """
    plan = batch_plan(cfg, trainer)
    speed = speed_options(cfg)
    model = build_model(cfg, datamodule) if model is None else model
    module = instantiate(scaled_module_config(cfg, plan), model=model, num_labels=datamodule.num_labels,
                         compile=speed["compile"], fused_optimizer=speed["fused_optimizer"],
                         attention=speed["attention"], **extra)
    return module, plan
