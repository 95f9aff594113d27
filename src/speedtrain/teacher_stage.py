"""Stage 1 of a distillation run, and the teacher's part of stage 2.

:func:`ensure_teacher` finds the fine-tuned teacher (``teacher.path``, the teacher cache, or a fine-tuning now, in
``<run>/teacher/``); :func:`prepare_distillation` brings its outputs (cached) or itself (online) to the student's
data and returns what the DistillModule needs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoConfig

from speedtrain.builders import build_datamodule
from speedtrain.data.datamodule import TextDataModule
from speedtrain.data.sources import unlabeled as unlabeled_texts
from speedtrain.distill.ngram_teacher import fold_assignment
from speedtrain.distill.static_init import static_initializer
from speedtrain.distill.teacher import (
    attach_teacher,
    cached_teacher,
    teacher_key,
    teacher_run_config,
)
from speedtrain.errors import UserError
from speedtrain.families import model_name
from speedtrain.fit import fit_and_evaluate
from speedtrain.models.teacher import load_tokenizer, resolve_source
from speedtrain.trainer import fit_epochs, labelling_device, predict_trainers

log = logging.getLogger(__name__)


def ensure_teacher(cfg: DictConfig) -> tuple[str, dict]:
    """The fine-tuned teacher's folder: ``teacher.path``, a cached teacher, or one fine-tuned now (stage 1).

    With ``teacher.crossfit=k`` (k >= 2) stage 1 also fine-tunes (or finds cached) k fold teachers, teacher ``f``
    on the training texts outside fold ``f``: :func:`fold_teachers`.

    Returns:
        The folder and what stage 1 did (``teacher/cached``, ``teacher/key``, ``teacher/fit_s``; with cross-fitting
        ``teacher/crossfit`` and ``teacher/fold_dirs``, the fold teachers' folders).
    """
    started, t = time.perf_counter(), cfg.teacher
    folds = check_crossfit(cfg)
    if t.get("path"):
        return t.path, {"teacher/source": str(t.path)}
    if not t.get("source"):
        raise UserError("distillation needs a teacher: pick one (teacher=minilm) or pass teacher.path=<folder> of "
                        "a fine-tuned teacher")
    teacher_cfg = teacher_run_config(cfg, Path(cfg.paths.output_dir) / "teacher")
    teacher_data = build_datamodule(teacher_cfg)
    teacher_data.prepare()
    timings = {"data_s": time.perf_counter() - started}
    key = teacher_key(teacher_cfg, teacher_data.data_digest, fit_epochs(teacher_cfg, len(teacher_data.encoded["train"])))
    folder, stage1 = _fit_or_find(teacher_cfg, teacher_data, key, "teacher", started, timings)
    if folds:
        stage1.update({"teacher/crossfit": folds, "teacher/fold_dirs": fold_teachers(cfg, key, folds)})
    log.info("Stage 2/2: distilling the teacher into the student")
    return folder, stage1


def _fit_or_find(teacher_cfg: DictConfig, data: TextDataModule, key: str, stage: str, started: float,
                 timings: dict) -> tuple[str, dict]:
    """The cached teacher of ``key``, or one fine-tuned now on ``data`` (and cached): its folder and what was done."""
    t = teacher_cfg.teacher
    found = cached_teacher(teacher_cfg.paths.cache_dir, key) if t.get("cache", True) else None
    if found is not None:
        log.info("Using the cached %s %s", stage.replace("_", " "), found)
        return str(found), {"teacher/cached": True, "teacher/key": key, "teacher/source": t.source}
    log.info("Stage 1/2: fine-tuning the %s %s (no cached teacher %s)", stage.replace("_", " "), t.source, key)
    metrics = fit_and_evaluate(teacher_cfg, data, started, timings, stage=stage,
                               store_teacher_as=key if t.get("cache", True) else None)
    cached = cached_teacher(teacher_cfg.paths.cache_dir, key)
    if cached is not None:  # stage 1 is done for good: its resume checkpoint (weights + optimizer) can go
        (Path(teacher_cfg.paths.output_dir) / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    folder = cached or Path(teacher_cfg.paths.output_dir) / "model"
    return str(folder), {"teacher/cached": False, "teacher/key": key, "teacher/source": t.source,
                         "teacher/fit_s": metrics["timings"]["total_s"]}


def check_crossfit(cfg: DictConfig) -> int:
    """``teacher.crossfit`` checked against the rest of a distillation run's config (``check_config`` calls it
    before any work): the number of folds, 0 when off."""
    folds = crossfit_folds(cfg)
    if folds and cfg.teacher.get("path"):
        raise UserError(f"teacher.crossfit={folds} fine-tunes {folds} fold teachers, so it needs stage 1: drop "
                        "teacher.path (the teacher is fine-tuned or found in the cache) or pass teacher.crossfit=0")
    if folds and (cfg.get("distill") or {}).get("teacher_logits", "cache") == "online":
        raise UserError(f"teacher.crossfit={folds} labels each training text with a fold teacher's cached logits, so "
                        "it needs distill.teacher_logits=cache: drop distill.teacher_logits=online, or pass "
                        "teacher.crossfit=0")
    return folds


def crossfit_folds(cfg: DictConfig) -> int:
    """``teacher.crossfit`` checked: 0 (off) or the number of folds k >= 2."""
    k = cfg.teacher.get("crossfit", 0) or 0
    if not isinstance(k, int) or isinstance(k, bool) or k < 0 or k == 1:
        raise UserError(f"teacher.crossfit={k!r} must be 0 (off) or a number of folds >= 2, e.g. teacher.crossfit=5")
    return k


def fold_teachers(cfg: DictConfig, key: str, folds: int) -> list[str]:
    """Cross-fitting: ``folds`` teachers, teacher ``f`` fine-tuned like the full one on the training texts outside
    fold ``f`` (stratified, seeded by ``teacher.seed``: :func:`~speedtrain.distill.ngram_teacher.fold_assignment`,
    the n-gram half's folds when ``teacher.ngram.folds`` is the same k), in ``<run>/teacher_fold<f>/`` and cached.
    The student's targets on a training text and on its variants then come from a teacher that never saw it.
    Returns their folders."""
    dirs = []
    for f in range(folds):
        started = time.perf_counter()
        fold_cfg = teacher_run_config(cfg, Path(cfg.paths.output_dir) / f"teacher_fold{f}")
        data = build_datamodule(fold_cfg)
        data.prepare()
        fold = fold_assignment(np.asarray(data.splits["train"]["label"]), folds, int(cfg.teacher.seed),
                               setting="teacher.crossfit")
        keep = np.flatnonzero(fold != f)  # right after prepare(): no batches or device tables built from it yet
        data.splits["train"] = data.splits["train"].select(keep)
        data.encoded["train"] = data.encoded["train"].select(keep)
        fold_key = hashlib.sha256(f"{key}/crossfit fold {f} of {folds}".encode()).hexdigest()[:20]
        timings = {"data_s": time.perf_counter() - started}
        dirs.append(_fit_or_find(fold_cfg, data, fold_key, f"teacher_fold{f}", started, timings)[0])
    return dirs


def prepare_distillation(cfg: DictConfig, datamodule: TextDataModule, loss, teacher_dir: str, stage1: dict,
                         unlabeled: list[str] | None = None) -> dict:
    """Bring the teacher's outputs (cached) or the teacher itself (online) to ``datamodule``.

    Args:
        unlabeled: the texts of ``distill.unlabeled`` (:func:`read_unlabeled`), labelled by the teacher.

    Returns:
        ``teacher_dir``, the teacher's metrics (``teacher_metrics``), the DistillModule's arguments (``module``:
        loss, teacher, intermediate loss, sizes) and ``init`` (``model.init=teacher``: what starts the student
        from the teacher, or None), as :func:`speedtrain.fit.fit_and_evaluate` takes them.
    """
    d = cfg.distill
    augment = OmegaConf.to_container(d.augment, resolve=True) if d.get("augment") else None
    inter = d.get("intermediate")
    # a student without layers (static) has one vector per text: model.distill_text_vector matches it with the
    # teacher's last layer (its per-text mean, cached like the logits), else it learns from the logits alone
    text_vector = inter is not None and cfg.model.get("num_hidden_layers") is None
    if text_vector and not cfg.model.get("distill_text_vector", False):
        log.info("The student (model=%s) has no hidden layers to match the teacher's: distilling logits only "
                 "(distill=logits)", model_name(cfg))
        inter, text_vector = None, False
    teacher_config = None
    if inter is not None:  # check the layer map before any teacher work
        teacher_config = AutoConfig.from_pretrained(resolve_source(str(teacher_dir)))
        if text_vector:
            inter = inter.copy()
            with open_dict(inter):
                inter.layer_map = [[0, teacher_config.num_hidden_layers]]
            log.info("The student (model=%s) matches its text vector with the mean of the teacher's last layer "
                     "(distill.intermediate.hidden_weight=%s)", model_name(cfg), inter.get("hidden_weight", 1.0))
        instantiate(inter, student_width=1, teacher_width=1, shared_tokens=not text_vector,
                    teacher_layers=teacher_config.num_hidden_layers, student_layers=cfg.model.get("num_hidden_layers"))
    shared = load_tokenizer(teacher_dir).get_vocab() == datamodule.tokenizer.get_vocab() and not text_vector
    # token-level intermediate terms need the teacher online; per-text ones (other tokenizers) are cached
    online = d.get("teacher_logits", "cache") == "online" or (inter is not None and shared)
    layers = tuple(pair[1] for pair in inter.layer_map) if inter is not None and not online else ()
    init = cfg.model.get("init")  # before the transfer set joins the training split: SIF counts the data's own texts
    init = static_initializer(init, teacher_dir, datamodule, cfg.paths.cache_dir,
                              scale=float(cfg.model.get("init_scale", 1.0)),
                              importance=str(cfg.model.get("init_importance", "uniform"))) if init else None
    fold_dirs = stage1.get("teacher/fold_dirs")
    if fold_dirs and online:
        raise UserError(f"teacher.crossfit={len(fold_dirs)} labels each training text with a fold teacher's cached "
                        "logits, so the teacher cannot run online (distill.teacher_logits=online, or token-level "
                        "intermediate terms): pass distill=logits, or teacher.crossfit=0")
    if unlabeled and online:
        raise UserError("distill.unlabeled needs cached teacher logits: with the teacher online (distill.teacher_logits"
                        "=online, or token-level intermediate terms) pass distill=logits, or drop distill.unlabeled")
    metrics, teacher = attach_teacher(cfg.teacher, teacher_dir, datamodule, cfg.paths.cache_dir, augment,
                                      online=online, hidden_layers=layers, unlabeled=unlabeled,
                                      unlabeled_weight=float(d.get("unlabeled_weight", 1.0)),
                                      make_trainer=predict_trainers(cfg), fold_teachers=fold_dirs,
                                      device=labelling_device(cfg))
    metrics.update({k: v for k, v in stage1.items() if k != "teacher/fold_dirs"},
                   **{"distill/teacher_logits": "online" if online else "cache"})
    module = {"loss": loss, "teacher": teacher, "shared_tokens": shared, "mixup": float(d.get("mixup") or 0.0)}
    if inter is not None:
        module["intermediate"] = instantiate(inter, _partial_=True)
        # the sizes as a dict (Hydra would convert a config object)
        module["teacher_config"] = {k: getattr(teacher_config, k) for k in ("hidden_size", "num_hidden_layers")}
    return {"teacher_dir": teacher_dir, "teacher_metrics": metrics, "module": module, "init": init}


def read_unlabeled(cfg: DictConfig) -> list[str] | None:
    """The texts of ``distill.unlabeled`` (None when unset), read and checked before any teacher work."""
    d = cfg.get("distill") or {}
    if not d.get("unlabeled"):
        return None
    if not cfg.teacher.get("source") and not cfg.teacher.get("path"):
        raise UserError("distill.unlabeled needs a teacher to label its texts, and teacher=none has none: pass "
                        "teacher=minilm (or teacher.path=<folder> of a fine-tuned teacher), or drop distill.unlabeled")
    weight = d.get("unlabeled_weight", 1.0)
    if not isinstance(weight, (int, float)) or not weight > 0:
        raise UserError(f"distill.unlabeled_weight={weight!r} must be a positive number (1: an unlabelled text counts "
                        "as much as a labelled one), e.g. distill.unlabeled_weight=0.5")
    limit = d.get("unlabeled_limit")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise UserError(f"distill.unlabeled_limit={limit!r} must be a positive integer (or null: every text)")
    texts = unlabeled_texts(str(d.unlabeled), column=d.get("unlabeled_column", "text"),
                            split=d.get("unlabeled_split", "train"), config=d.get("unlabeled_config"), limit=limit,
                            cache_dir=str(Path(cfg.paths.cache_dir).expanduser() / "datasets"))
    log.info("distill.unlabeled: %s texts read from %s", f"{len(texts):,}", d.unlabeled)
    return texts
