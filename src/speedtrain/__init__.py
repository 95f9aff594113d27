"""speedtrain: train compact, fast text classifiers and ship them."""

__version__ = "0.1.0"

import os as _os

from speedtrain.config import default_cache_dir as _cache

# matplotlib (imported by torchmetrics, used for benchmark.png) writes a font cache under ~/.config or ~/.cache
# unless MPLCONFIGDIR says where: keep it in speedtrain's cache folder, nothing else under $HOME
_os.environ.setdefault("MPLCONFIGDIR", str(_cache() / "matplotlib"))


def _if_set(value, then, otherwise):
    """``${speedtrain.if_set:${resume},A,B}``: A when ``value`` is set (not null or empty), else B."""
    return then if value not in (None, "") else otherwise


def _run_group(task_name: str) -> str:
    """``${speedtrain.run_group:${task_name}}``: the W&B group: the sweep in a Hydra multirun, else the task."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task_name}-sweep-{_slug(HydraConfig.get().sweep.dir)}"
    return task_name


def _slug(path) -> str:
    """The last two parts of a sweep folder: ``multirun/2026-11-28/12-00-00`` -> ``2026-11-28_12-00-00``."""
    return "_".join(str(path).rstrip("/").split("/")[-2:])


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("speedtrain.if_set"):
        OmegaConf.register_new_resolver("speedtrain.if_set", _if_set)
    if not OmegaConf.has_resolver("speedtrain.run_group"):
        OmegaConf.register_new_resolver("speedtrain.run_group", _run_group)


_register_resolvers()
