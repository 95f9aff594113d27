"""Training loaders that resume mid-epoch: a run restarted from a checkpoint saved after batch k of an epoch
continues that epoch with batch k + 1, not with the epoch's first batch again.

Lightning stores a training loader's ``state_dict()`` in every checkpoint and hands it back to
``load_state_dict()`` before the resumed fit draws its first batch (a loader with both methods is "stateful"). The
state is where training was: the epoch and the number of its batches already trained on, read from the trainer's
progress when the checkpoint is written (not from what the loader produced: the trainer fetches ahead). Since an
epoch's order depends only on (seed, epoch), the loader draws that epoch's order again and skips those batches'
indices, without loading them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

Position = Callable[[], tuple[int, int, float]]  # () -> (epoch, batches of it trained on, batches in an epoch)


class ResumablePosition:
    """The stateful-loader half shared by :class:`ResumableDataLoader` and the on-device batches."""

    position: Position | None = None
    _resume: tuple[int, int] | None = None  # (epoch, batches to skip) of the first epoch after a restore

    def state_dict(self) -> dict:
        if self.position is None:
            return {}
        epoch, batches, of = self.position()  # ``of``: the trainer's epoch length (limit_train_batches counts)
        return {"epoch": int(epoch), "batches": int(batches), "of": float(of)}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" not in state:
            return
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= min(state.get("of", float("inf")), len(self)):  # saved at the end of an epoch: the next
            epoch, batches = epoch + 1, 0  # one starts from its first batch
        self._resume = (epoch, batches)
        self._resumed_epoch(epoch)

    def _resumed_epoch(self, epoch: int) -> None:
        """Tell the sampler the epoch to draw (with DataLoader workers the order is drawn before Lightning does)."""

    def _skip_for(self, epoch: int) -> int:
        """Batches to skip in ``epoch``: those trained on before the restore, once."""
        resume, self._resume = self._resume, None
        return resume[1] if resume is not None and resume[0] == epoch else 0


class _Skippable:
    """The loader's batch sampler, whose next pass leaves out its first ``skip`` batches (index lists only: no
    rows are loaded). One object per loader: a persistent-workers iterator keeps it and draws each epoch from it."""

    def __init__(self, index_sampler) -> None:
        self.index_sampler, self.skip = index_sampler, 0

    def __iter__(self) -> Iterator:  # a generator: the skip goes to the pass that is drawn from first (a
        skip, self.skip = self.skip, 0  # DataLoader iterator may call iter() twice and draw from the second)
        yield from itertools.islice(iter(self.index_sampler), skip, None)

    def __len__(self) -> int:
        return len(self.index_sampler)


class ResumableDataLoader(ResumablePosition, DataLoader):
    """A ``DataLoader`` that resumes mid-epoch (see the module).

    Args:
        position: returns (epoch, batches trained on) for the checkpoint's state; the other arguments are the
            DataLoader's. Its sampler's order must depend only on the epoch (``set_epoch``), as
            :class:`~speedtrain.data.datamodule.SeededSampler`'s and ``DistributedSampler``'s do.
    """

    def __init__(self, *args, position: Position | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self._skippable: _Skippable | None = None

    def _resumed_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        skip = self._skip_for(getattr(self.sampler, "epoch", 0)) if self._resume else 0
        self._index_sampler.skip = skip  # also clears a skip that an iterator made but never drawn from left
        return super().__iter__()  # a new iterator, or the persistent one reset: both draw from _index_sampler

    @property
    def _index_sampler(self):
        inner = super()._index_sampler
        if self._skippable is None or self._skippable.index_sampler is not inner:
            self._skippable = _Skippable(inner)
        return self._skippable


def restore_loader_position(trainer) -> None:
    """Hand the training loader its checkpointed position, and draw the epoch again from there (once, as a resumed
    fit starts training: ``on_train_start``).

    Lightning passes a stateful loader its state only when it builds the loader after restoring the checkpoint. A
    module whose ``configure_optimizers`` asks ``trainer.estimated_stepping_batches`` (for its schedule's length)
    has Lightning build the loader before the restore, so the state would be dropped and the resumed epoch would
    start from its first batch again.
    """
    loop = trainer.fit_loop
    if not loop.restarting or not getattr(loop, "_combined_loader_states_to_load", None):
        return
    if loop._combined_loader is None or loop._data_fetcher is None:
        return
    loop._load_combined_loader_states()
    iter(loop._data_fetcher)  # a new iterator: the loaders now skip the batches already trained on
