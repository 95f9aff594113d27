"""Student families: which one a latency budget allows, and what each can do.

``export.latency_budget_ms`` (batch-1 p50 with tokenization, one thread) makes a run train the most accurate family
of ``export.families`` whose reference latency fits the budget, in place of the model group's choice:

    python train.py +experiment=distill export.latency_budget_ms=0.3     # -> model=static

The reference latencies were measured by the frontier (``python train.py -m +experiment=frontier``) on the
project's 2-core CPU; after the export the run compares its own bundle with the budget and warns when it misses.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

from speedtrain.config import config_dir
from speedtrain.errors import UserError

log = logging.getLogger(__name__)


def model_name(cfg: DictConfig) -> str:
    """The student family (``static``, ``bert_tiny``, ...): ``cfg.model_family`` once a budget picked it, else the
    model config's own ``family``, else Hydra's choice of the model group, else the builder's name."""
    if cfg.get("model_family"):
        return str(cfg.model_family)
    if (cfg.get("model") or {}).get("family"):
        return str(cfg.model.family)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get("model"))
    return str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]


def builder_config(model: DictConfig) -> DictConfig:
    """The ``model`` node as its ``_target_`` takes it: without ``family`` and ``recipe`` (for the experiments) and
    what a distillation run does with the teacher: ``init`` (:mod:`speedtrain.distill.static_init`), ``vocabulary``
    (:func:`speedtrain.builders.student_tokenizer`), ``distill_text_vector`` (``teacher_stage.prepare_distillation``)."""
    node = model.copy()
    with open_dict(node):
        for key in ("family", "recipe", "init", "init_scale", "init_importance", "distill_text_vector",
                    "vocabulary"):
            node.pop(key, None)
    return node


def load_model_config(name: str) -> DictConfig:
    """``conf/model/<name>.yaml`` with the files its ``defaults`` list names merged in first (as Hydra would)."""
    path = config_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"export.families names model {name!r}, which is not in conf/model; use one of {options}")
    node = OmegaConf.load(path)
    defaults = node.pop("defaults", []) if "defaults" in node else []
    merged = OmegaConf.create()
    for entry in defaults:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else load_model_config(str(entry)))
    return OmegaConf.merge(merged, node) if "_self_" not in defaults else merged


def pick_family(budget_ms: float, families: dict[str, float]) -> str:
    """The first (most accurate) family of ``families`` (name -> reference p50 ms) within ``budget_ms``."""
    if not budget_ms > 0:
        raise UserError(f"export.latency_budget_ms={budget_ms} must be a positive number of milliseconds, e.g. 0.5")
    for name, p50 in families.items():
        if p50 <= budget_ms:
            return name
    fastest = min(families, key=families.get)
    raise UserError(f"export.latency_budget_ms={budget_ms}: no student family answers that fast here; the fastest, "
                    f"{fastest}, takes {families[fastest]} ms: raise the budget to at least that")


def apply_latency_budget(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the model of the family ``export.latency_budget_ms`` allows (unchanged without a budget).

    A family the user chose on the command line (``model=...``) is kept: the budget is then only checked after the
    export. The choice is recorded as ``model_family``.
    """
    export = cfg.get("export") or {}
    budget = export.get("latency_budget_ms")
    if budget is None or cfg.get("model_family") or _chosen_on_command_line():
        return cfg
    families = OmegaConf.to_container(export.get("families") or {}, resolve=True)
    if not families:
        raise UserError("export.latency_budget_ms needs export.families (model name -> reference p50 ms)")
    name = pick_family(float(budget), families)
    log.info("export.latency_budget_ms=%s: training model=%s (reference p50 %s ms)", budget, name, families[name])
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model = load_model_config(name)
        cfg.model_family = name
    return cfg


def check_budget(cfg: DictConfig, e2e_p50_ms: float | None) -> None:
    """Warn when the bundle's measured batch-1 p50 (with tokenization) misses ``export.latency_budget_ms``."""
    budget = (cfg.get("export") or {}).get("latency_budget_ms")
    if budget is not None and e2e_p50_ms is not None and e2e_p50_ms > budget:
        log.warning("The bundle answers one text in %.3f ms (p50, with tokenization) on this machine: over "
                    "export.latency_budget_ms=%s; a faster family (export.families) or a faster machine meets it",
                    e2e_p50_ms, budget)


def check_family(cfg: DictConfig, prune: bool) -> None:
    """What the model family cannot do fails here, before any work."""
    if prune and cfg.model.get("intermediate_size") is None:
        raise UserError(f"export.prune.enabled=true prunes a transformer's feed-forward layers; model={model_name(cfg)}"
                        " has none: pass export.prune.enabled=false (or a BERT student, e.g. model=bert_tiny)")


def _chosen_on_command_line() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.split("=", 1)[0].lstrip("+~") == "model" for o in HydraConfig.get().overrides.task)


def grow_batch(cfg: DictConfig, train_rows: int) -> bool:
    """The family's large-data path (``model.recipe.large``): from ``from_texts`` training inputs on, the batch is
    ``large.batch_size`` (the learning rate scaled by the square root of the growth, ``trainer.min_steps`` divided
    by it) and ``sparse_grad`` / ``data.on_device`` take ``large``'s values. Where the user set the batch, the rate or
    the steps, that value stays. ``cfg`` is changed in place (the run's config records it); returns whether it grew.

    The static family's recipe was tuned on 14K inputs at batch 128; batch 1024 trains 13x faster but, on that data,
    0.4 points lower (docs/benchmarks.md): large data gets the speed, small data keeps its accuracy.
    """
    recipe = (cfg.get("model") or {}).get("recipe") or {}
    large = recipe.get("large")
    if not large or train_rows < int(large.from_texts) or int(cfg.data.batch_size) != int(recipe.batch_size):
        return False
    factor = int(large.batch_size) / int(recipe.batch_size)
    with open_dict(cfg):
        cfg.data.batch_size = int(large.batch_size)
        if recipe.get("lr") is not None and cfg.module.optimizer.get("lr") == recipe.lr:
            cfg.module.optimizer.lr = float(recipe.lr) * factor**0.5
        if recipe.get("min_steps") and cfg.trainer.get("min_steps") == recipe.min_steps:
            cfg.trainer.min_steps = -(-int(recipe.min_steps) // int(factor))
        for key, node in (("sparse_grad", cfg.model), ("on_device", cfg.data)):
            if key in large:
                node[key] = large[key]
    log.info("%s training inputs (>= model.recipe.large.from_texts=%s): batch %d, lr %.3g, sparse_grad=%s, "
             "data.on_device=%s", f"{train_rows:,}", f"{int(large.from_texts):,}", cfg.data.batch_size,
             cfg.module.optimizer.get("lr"), cfg.model.get("sparse_grad"), cfg.data.get("on_device"))
    return True
