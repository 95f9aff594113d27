"""Where the packaged Hydra configs are, and composing them from Python (tests, notebooks, the CLI)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONFIG_PACKAGE = "speedtrain.conf"


def config_dir() -> Path:
    """The ``conf/`` folder speedtrain was installed with (the repository's ``conf/`` in an editable install).

    From a source checkout on ``PYTHONPATH`` (not installed), the repository's ``conf/`` beside ``src/``.
    """
    try:
        return Path(str(resources.files(CONFIG_PACKAGE)))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "conf"
        if not (checkout / "train.yaml").is_file():
            raise
        return checkout


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style ``overrides``, outside a Hydra run.

    ``paths.output_dir`` normally comes from Hydra's run folder: pass ``paths.output_dir=<dir>``.
    """
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))


def default_cache_dir() -> Path:
    """The user's speedtrain cache, as ``paths.cache_dir`` resolves it: ``$SPEEDTRAIN_CACHE``, else
    ``$XDG_CACHE_HOME/speedtrain``, else ``~/.cache/speedtrain``."""
    if os.environ.get("SPEEDTRAIN_CACHE"):
        return Path(os.environ["SPEEDTRAIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path(os.environ.get("HOME", ".")) / ".cache") / "speedtrain"


def instantiate_known(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate(node, **kwargs)`` with only the keys its ``_target_`` takes, as plain Python values.

    A config group may hold settings for its nested nodes beside the target's own arguments (``data.label`` is read
    by ``data.source.label: ${..label}``); those stay in the config, resolved, and are not passed to the target.
    """
    import inspect

    from hydra.utils import get_object, instantiate
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True)
    parameters = inspect.signature(get_object(values["_target_"])).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kept = {k: v for k, v in values.items() if k.startswith("_") or k in parameters or takes_any}
    return instantiate(kept, _convert_="all", **kwargs)
