"""speedtrain's Hydra plugins. Hydra instantiates sweepers and launchers only from the ``hydra_plugins`` package:
these are thin names for the implementations in ``speedtrain.sweep`` and ``speedtrain.launcher``.

``hydra/sweeper`` of ``hparams_search=optuna``: :class:`OptunaSweeper`; ``hydra/launcher=slurm|local``:
:class:`SlurmLauncher`, :class:`LocalLauncher`. The entry points (``train.py``, ``speedtrain train``) call
:func:`register`: an editable install hides this package from Hydra's package scan.

Imports go one way: this package imports ``speedtrain``; no ``speedtrain`` module imports it, except the
``speedtrain train`` entry point (``speedtrain.cli``), which calls :func:`register`.
"""

from speedtrain.launcher import LocalLauncher as _LocalLauncher
from speedtrain.launcher import SlurmLauncher as _SlurmLauncher
from speedtrain.sweep import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    __doc__ = _OptunaSweeper.__doc__


class SlurmLauncher(_SlurmLauncher):
    __doc__ = _SlurmLauncher.__doc__


class LocalLauncher(_LocalLauncher):
    __doc__ = _LocalLauncher.__doc__


def register() -> None:
    """Register these plugins with Hydra (before ``hydra.main`` runs).

    Hydra finds plugins by scanning the ``hydra_plugins`` namespace package, which misses them in an editable
    install of speedtrain (its package-dir mapping installs an import hook, not a path): ``train.py`` and
    ``speedtrain train`` call this.
    """
    from hydra.core.plugins import Plugins

    for plugin in (OptunaSweeper, SlurmLauncher, LocalLauncher):
        Plugins.instance().register(plugin)
