"""Bring a fine-tuned teacher to a distillation run.

A distillation run needs a fine-tuned teacher. ``teacher.path`` names one to use as is; otherwise the run looks
in the teacher cache (``<cache_dir>/teachers/<key>``) and, when nothing matches, fine-tunes the teacher first
(stage 1, with the settings of ``+experiment=teacher``: :func:`teacher_run_config`) and stores it there.
The key (:func:`teacher_key`) covers the pretrained weights, the data (texts and labels of every split, hence the
label column and the split seed), the seed and every setting that changes the fine-tuned weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from speedtrain.config import config_dir
from speedtrain.data.datamodule import TextDataModule
from speedtrain.data.tokenizer import save_atomically
from speedtrain.distill.augment import neighbour_words, text_words, word_dropout_variants
from speedtrain.distill.logit_cache import cached_teacher_outputs
from speedtrain.distill.ngram_teacher import ensemble_logits, fold_assignment
from speedtrain.errors import UserError
from speedtrain.models.digest import weights_digest
from speedtrain.models.teacher import load_classifier, load_tokenizer, resolve_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Trainer settings that change what a fine-tuning run learns (the rest: logging, progress bars, ...)
TRAINER_KEYS = ("max_epochs", "max_steps", "limit_train_batches", "overfit_batches", "fast_dev_run",
                "accumulate_grad_batches", "gradient_clip_val", "precision", "devices", "num_nodes")
log = logging.getLogger(__name__)

MARKER = "speedtrain_teacher.json"  # written last into a cached teacher folder: its metrics and key


def teacher_run_config(cfg: DictConfig, output_dir: str | Path) -> DictConfig:
    """The config of stage 1: ``cfg`` with the model, tokenizer and hyperparameters of ``+experiment=teacher``.

    The settings come from ``conf/experiment/teacher.yaml``, ``conf/model/pretrained.yaml`` and
    ``conf/tokenizer/pretrained.yaml``, so ``+experiment=teacher`` and stage 1 fine-tune the same teacher.
    """
    conf = Path(config_dir())
    experiment = OmegaConf.load(conf / "experiment" / "teacher.yaml")
    experiment.pop("defaults", None)
    new = OmegaConf.merge(cfg, experiment)
    with open_dict(new):
        OmegaConf.update(new, "model", OmegaConf.load(conf / "model" / "pretrained.yaml"), merge=False)
        OmegaConf.update(new, "tokenizer", OmegaConf.load(conf / "tokenizer" / "pretrained.yaml"), merge=False)
        new.module.pop("loss", None)
        new.distill = None
        new.seed = cfg.teacher.seed
        wandb = (new.get("logger") or {}).get("wandb")
        if wandb is not None:  # one W&B run per distillation run: stage 1 logs into it with the prefix "teacher"
            wandb.save_dir = cfg.paths.output_dir
        new.paths.output_dir = str(output_dir)
        checkpoint = new.get("callbacks", {}).get("model_checkpoint")
        if checkpoint is not None:  # the teacher goes to the cache as a HF folder: keep one small checkpoint
            checkpoint.save_last, checkpoint.save_weights_only = False, True
        # callbacks.last_checkpoint stays: an interrupted stage 1 resumes from <run>/teacher/checkpoints/last.ckpt
    return new


def is_teacher_run(cfg: DictConfig) -> bool:
    """Whether ``cfg`` fine-tunes the configured teacher itself (``+experiment=teacher``)."""
    model = cfg.get("model") or {}
    return (not cfg.get("distill") and model.get("_target_") == "speedtrain.models.teacher.load_classifier"
            and bool(cfg.teacher.get("source")) and model.get("source") == cfg.teacher.source)


def teacher_key(cfg: DictConfig, data_digest: str, epochs: int | None = None) -> str:
    """The cache key of the teacher that the run config ``cfg`` (stage 1 or ``+experiment=teacher``) fine-tunes.

    ``epochs``: the epochs the fit makes (``trainer.min_steps`` raises ``max_epochs`` on small data:
    :func:`~speedtrain.trainer.epochs_for_min_steps`), in place of ``trainer.max_epochs``; so a teacher keeps its
    key where ``min_steps`` changes nothing.
    """
    trainer = {k: cfg.trainer.get(k) for k in TRAINER_KEYS}
    if epochs is not None:
        trainer["max_epochs"] = epochs
    source = resolve_source(cfg.model.source)
    parts = {
        "weights": weights_digest(source) if Path(source).is_dir() else source,
        "data": data_digest,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "loader": {k: cfg.data.get(k) for k in ("batch_size", "max_length", "group_by_length")},
        "module": OmegaConf.to_container(cfg.module, resolve=True),
        "trainer": trainer,
        "seed": cfg.seed,
    }
    parts["model"].pop("source")  # covered by the weights digest (a folder may move)
    if parts["model"].get("pooling") in (None, "cls"):  # the model's own pooler: the key of teachers cached before
        parts["model"].pop("pooling", None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_teacher(cache_dir: str | Path, key: str) -> Path | None:
    """The cached teacher folder for ``key``, or None (a folder without its marker is incomplete: ignored)."""
    folder = Path(cache_dir).expanduser() / "teachers" / key
    return folder if (folder / MARKER).is_file() else None


def store_teacher(model_dir: str | Path, cache_dir: str | Path, key: str, metrics: dict) -> Path:
    """Copy a fine-tuned teacher folder into the cache (atomically) with its metrics; returns the cached folder."""
    folder = Path(cache_dir).expanduser() / "teachers" / key

    def save(tmp: str) -> None:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        info = {"key": key, **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
        (Path(tmp) / MARKER).write_text(json.dumps(info, indent=2) + "\n")

    if folder.exists() and not (folder / MARKER).is_file():
        shutil.rmtree(folder)  # a copy that an earlier crash left incomplete
    save_atomically(save, folder)
    return folder


def attach_teacher(
    teacher_cfg: DictConfig, path: str | Path, datamodule: TextDataModule, cache_dir: str,
    augment: dict | None = None, online: bool = False, hidden_layers: tuple[int, ...] = (),
    unlabeled: list[str] | None = None, unlabeled_weight: float = 1.0, make_trainer=None,
    fold_teachers: list[str] | None = None, device: str = "cpu",
) -> tuple[dict, PreTrainedModel | None]:
    """Bring the teacher's knowledge of the training inputs into ``datamodule``; return its metrics.

    Args:
        augment: keyword arguments of :func:`~speedtrain.distill.augment.word_dropout_variants` (``copies``,
            ``word_dropout``, ``word_swap``, ``span``, ``span_words``, ``replace``, ``seed``): the variants join the
            training split (the transfer set); ``label``: their label for the cross-entropy, ``source`` (the text's
            they come from) or ``teacher`` (the teacher's top class); ``replace_neighbours``: how many of a word's
            nearest pieces in the teacher's input embeddings may replace it. None or ``copies=0``: the training
            texts only.
        online: instead of cached logits, the training split gets the teacher's tokenization and the teacher
            itself is returned, to run every step.
        hidden_layers: teacher layers whose pooled hidden states are cached beside the logits
            (``teacher_hidden``), for intermediate distillation without the teacher online.
        unlabeled: bare texts (``distill.unlabeled``) the teacher labels (cached like the rest); they join the
            training split with the teacher's logits and its top class as the label, each weighing
            ``unlabeled_weight`` in the loss against 1 for a labelled input (``sample_weight``). Texts of any
            split are dropped first (no test text is trained on), and repeats.
        make_trainer: ``callbacks -> Trainer`` of a run of several processes: the teacher labels through its
            predict loop, each rank its share (:mod:`speedtrain.distill.labelling`).
        fold_teachers: cross-fitting (``teacher.crossfit``): the folders of k teachers, teacher ``f`` fine-tuned
            without fold ``f`` of the training texts (``fold_assignment(labels, k, teacher_cfg.seed)``). A training
            text and its variants get the logits of the teacher that did not see it; validation, test and
            unlabelled texts those of ``path``, the teacher fine-tuned on all of them.
        device: where a run of one process labels (``cuda`` on a GPU run: :func:`~speedtrain.trainer.labelling_device`);
            the returned online teacher is on the CPU, for Lightning to place.

    With a ``teacher_cfg.ngram`` node (``teacher=ensemble``) the cached logits are the combination of the
    transformer's with an n-gram model's (:func:`~speedtrain.distill.ngram_teacher.ensemble_logits`), and
    ``teacher/val_acc``, ``teacher/test_acc`` and ``teacher/params`` are the ensemble's.

    Returns:
        ``teacher/val_acc``, ``teacher/test_acc``, ``teacher/params``, ``teacher/logits_from_cache``,
        ``distill/transfer_set`` (training inputs including the variants and unlabelled texts),
        ``distill/unlabeled`` (unlabelled texts used); and the teacher when ``online``.
    """
    augment = dict(augment or {})
    label_by = augment.pop("label", "source")
    replace_k = augment.pop("replace_neighbours", 8)
    if label_by not in ("source", "teacher"):
        raise UserError(f"distill.augment.label={label_by!r} must be 'source' (a variant keeps its text's label) or "
                        "'teacher' (the teacher's top class)")
    if online and label_by == "teacher":
        raise UserError("distill.augment.label=teacher needs the teacher's cached logits (distill.teacher_logits="
                        "cache): use distill.augment.label=source with an online teacher")
    ngram = teacher_cfg.get("ngram")
    if ngram and online:
        raise UserError("teacher=ensemble adds an n-gram model's logits to the cached teacher logits, so it cannot run "
                        "online (distill.teacher_logits=online, or token-level intermediate terms with the teacher's "
                        "tokenizer): use distill.teacher_logits=cache (distill=logits), or teacher=minilm")
    path = str(path)
    teacher = load_classifier(path, num_labels=datamodule.num_labels, fine_tuned=True)
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if names != datamodule.label_names:
        raise UserError(f"the teacher at teacher.path={path!r} was trained on other labels ({names[:5]}...) than "
                        f"the data's ({datamodule.label_names[:5]}...); fine-tune a teacher on this data")
    tokenizer = load_tokenizer(path)
    metrics: dict = {"teacher/params": sum(p.numel() for p in teacher.parameters()), "teacher/dir": path}

    def outputs_of(texts: list[str], layers: tuple[int, ...] = ()) -> tuple[dict[str, np.ndarray], bool]:
        return cached_teacher_outputs(path, teacher, tokenizer, texts, teacher_cfg.max_length, cache_dir, layers,
                                      make_trainer=make_trainer, device=device)

    evaluated = {}
    for split, key in (("validation", "val"), ("test", "test")):  # the teacher's own accuracy (cached logits)
        ds = datamodule.splits[split]
        evaluated[split] = logits = outputs_of(list(ds["text"]))[0]["logits"]
        metrics[f"teacher/{key}_acc"] = float(np.mean(logits.argmax(1) == np.asarray(ds["label"])))
    train = datamodule.splits["train"]
    texts = list(train["text"])
    if augment.get("replace") and augment.get("copies"):  # the teacher's nearest words, for its training words
        augment["neighbours"] = neighbour_words(teacher.get_input_embeddings().weight, tokenizer.get_vocab(),
                                                text_words(texts), replace_k)
    variants = word_dropout_variants(texts, **augment) if augment else []
    column = list(train["label"]) if variants else []  # read once: indexing the Dataset's column reads it whole
    source_labels = [column[i] for i, _ in variants]
    texts_all = texts + [v for _, v in variants]
    metrics["distill/transfer_set"] = len(texts_all)
    if online:
        if variants:
            datamodule.add_train_texts([v for _, v in variants], source_labels)
        datamodule.attach_teacher_inputs(tokenizer, texts_all, teacher_cfg.max_length)
        return metrics, teacher
    if fold_teachers:
        outputs, cached = out_of_fold_outputs(teacher_cfg, fold_teachers, datamodule, texts, variants, cache_dir,
                                              hidden_layers, make_trainer, device)
        metrics["teacher/crossfit_train_acc"] = float(np.mean(outputs["logits"][: len(texts)].argmax(1)
                                                              == np.asarray(train["label"])))
    else:
        outputs, cached = outputs_of(texts, hidden_layers)
    if variants and not fold_teachers:  # cached apart: the training texts' outputs stay valid when the variants change
        extra, extra_cached = outputs_of(texts_all[len(texts):], hidden_layers)
        outputs = {k: np.concatenate([v, extra[k]]) for k, v in outputs.items()}
        cached = cached and extra_cached
    if ngram:  # teacher=ensemble
        node = OmegaConf.to_container(ngram, resolve=True)
        outputs["logits"], ensemble = ensemble_logits(node, teacher_cfg.seed, datamodule.splits, variants,
                                                      {**evaluated, "train": outputs["logits"]}, cache_dir)
        metrics.update(ensemble, **{"teacher/params": metrics["teacher/params"] + ensemble["teacher/ngram_params"]})
    if variants:  # their labels: the source text's, or the teacher's top class (ensemble included)
        labels = (outputs["logits"][len(texts):].argmax(1).tolist() if label_by == "teacher"
                  else source_labels)
        datamodule.add_train_texts([v for _, v in variants], labels)
    weights = None
    if unlabeled:
        bare = new_texts(unlabeled, datamodule.splits)
        if not bare:
            raise UserError(f"every one of the {len(unlabeled):,} texts of distill.unlabeled is already in the data "
                            "(train, validation or test): give other texts")
        if ngram:
            log.warning("teacher=ensemble: the unlabelled texts are labelled by the transformer alone")
        extra, extra_cached = outputs_of(bare, hidden_layers)
        cached = cached and extra_cached
        datamodule.add_train_texts(bare, extra["logits"].argmax(1).tolist())
        weights = np.concatenate([np.ones(len(outputs["logits"]), np.float32),
                                  np.full(len(bare), unlabeled_weight, np.float32)])
        outputs = {k: np.concatenate([v, extra[k]]) for k, v in outputs.items()}
        metrics["distill/unlabeled"] = len(bare)
        metrics["distill/transfer_set"] += len(bare)
        log.info("distill.unlabeled: %s texts labelled by the teacher join the %s training inputs (weight %g)",
                 f"{len(bare):,}", f"{len(texts_all):,}", unlabeled_weight)
    datamodule.attach_teacher_logits(outputs["logits"], outputs.get("hidden"), weights)
    metrics["teacher/logits_from_cache"] = cached
    return metrics, None


def out_of_fold_outputs(teacher_cfg: DictConfig, fold_teachers: list[str], datamodule: TextDataModule,
                        texts: list[str], variants: list[tuple[int, str]], cache_dir: str,
                        layers: tuple[int, ...] = (), make_trainer=None,
                        device: str = "cpu") -> tuple[dict[str, np.ndarray], bool]:
    """The outputs of the training texts and then of their ``variants``, each row by the fold teacher that did not
    see its (source) text; cached per fold teacher, training texts and variants apart. Returns them and whether
    all came from the cache."""
    k = len(fold_teachers)
    fold = fold_assignment(np.asarray(datamodule.splits["train"]["label"]), k, int(teacher_cfg.seed),
                           setting="teacher.crossfit")
    source = np.concatenate([np.arange(len(texts)), np.array([i for i, _ in variants], dtype=np.int64)])
    inputs = texts + [v for _, v in variants]
    outputs: dict[str, np.ndarray] = {}
    cached = True
    for f, folder in enumerate(fold_teachers):
        teacher = load_classifier(folder, num_labels=datamodule.num_labels, fine_tuned=True)
        tokenizer = load_tokenizer(folder)
        held = np.flatnonzero(fold[source] == f)
        for rows in (held[held < len(texts)], held[held >= len(texts)]):  # texts, variants
            if not len(rows):
                continue
            found, hit = cached_teacher_outputs(folder, teacher, tokenizer, [inputs[r] for r in rows],
                                                teacher_cfg.max_length, cache_dir, layers, make_trainer=make_trainer,
                                                device=device)
            for name, values in found.items():
                if name not in outputs:
                    outputs[name] = np.zeros((len(inputs), *values.shape[1:]), values.dtype)
                outputs[name][rows] = values
            cached = cached and hit
        log.info("teacher.crossfit: fold teacher %d of %d labelled %s inputs", f + 1, k, f"{len(held):,}")
        del teacher
    return outputs, cached


def new_texts(texts: list[str], splits) -> list[str]:
    """``texts`` without those of any split of ``splits`` and without repeats, in their order."""
    seen = set()
    for ds in splits.values():
        seen.update(ds["text"])
    out = []
    for text in texts:
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def student_vs_teacher(student: dict, teacher: dict) -> dict:
    """``distill/teacher_share``: student test accuracy / teacher's; ``distill/size_ratio``: teacher / student params."""
    return {
        "distill/teacher_share": student.get("test/acc", 0.0) / max(teacher["teacher/test_acc"], 1e-9),
        "distill/size_ratio": teacher["teacher/params"] / student["params"]["params_total"],
    }
