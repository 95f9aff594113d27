"""speedtrain's Hydra plugins. Hydra instantiates sweepers and launchers only from the ``hydra_plugins`` package:
these are thin names for the implementations in ``speedtrain.sweep`` and ``speedtrain.launcher``.

``hydra/sweeper`` of ``hparams_search=optuna``: :class:`OptunaSweeper`; ``hydra/launcher=slurm|local``:
:class:`SlurmLauncher`, :class:`LocalLauncher`. ``train.py`` registers them with Hydra
(:func:`speedtrain.sweep.register_plugins`): an editable install hides them from Hydra's package scan.
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
