"""Hydra sweeps: a resumable Optuna sweeper and the ``sweep_summary.csv``/``.md`` every multirun ends with.

``hparams_search=optuna`` uses :class:`OptunaSweeper`: hydra-optuna-sweeper with its study in
``<sweep dir>/optuna.db`` (sqlite) and three changes that make an interrupted sweep continue where it stopped
(re-launch it with ``hydra.sweep.dir=<that sweep>``):

- ``n_trials`` is the size of the whole study, not of this launch: finished trials are not run again;
- trials left running by the interruption are marked failed and their parameters are tried again first;
- a failing trial is recorded as failed and the sweep goes on (``max_failure_rate`` per batch of trials);
- a search space with keys the composed config lacks (``hparams_search=optuna``, which searches ``distill.*``, on
  ``+experiment=baseline``) stops the sweep before anything runs or is written, with one line naming the
  ``hparams_search`` choice that fits (:func:`check_search_space`).

:class:`SweepSummary` (a Hydra callback in ``conf/train.yaml``) ranks the jobs of any multirun by the objective
from their ``metrics.json``; the Optuna sweeper also writes it after every batch of trials.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from speedtrain.errors import UserError, exit_on_user_error

log = logging.getLogger(__name__)


def write_summary(sweep_dir: str | Path, objective: str = "val/acc", swept: set[str] | None = None) -> Path | None:
    """Rank the jobs in ``sweep_dir`` by ``objective`` into ``sweep_summary.csv`` and ``sweep_summary.md``.

    A job is a sub-folder with ``.hydra/overrides.yaml``; one without ``metrics.json`` is listed as failed (or
    still running). Columns: rank, job, status, the objective, test/acc when tested, the ``swept`` keys and the
    overrides that differ between jobs. Returns the csv's path (None when the folder holds no job yet).
    """
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    rows = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(overrides_file) if "=" in o)
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        rows.append({"job": job_dir.name, "status": "complete" if objective in metrics else "failed",
                     objective: metrics.get(objective), "test/acc": metrics.get("test/acc"), **overrides})
    if not rows:
        return None
    table = pd.DataFrame(rows)
    fixed = [c for c in table.columns[4:]
             if c not in (swept or ()) and table[c].nunique(dropna=False) <= 1 and len(table) > 1]
    table = table.drop(columns=fixed)
    descending = "loss" not in objective
    table = table.sort_values(objective, ascending=not descending, na_position="last", kind="stable")
    table.insert(0, "rank", range(1, len(table) + 1))
    csv = sweep_dir / "sweep_summary.csv"
    table.to_csv(csv, index=False)
    done = int((table["status"] == "complete").sum())
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(table)} jobs ({done} complete), ranked by `{objective}` ({'max' if descending else 'min'}).", ""]
    if fixed:
        lines += ["Same in every job: " + ", ".join(f"`{c}={rows[0].get(c)}`" for c in fixed), ""]
    header = [str(c) for c in table.columns]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in record) + " |")
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    return csv


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def swept_keys(config: DictConfig) -> set[str]:
    """The keys a multirun varies: the sweeper's ``params`` and the command line's value lists / sweeps."""
    keys = set((OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}).keys())
    for override in OmegaConf.select(config, "hydra.overrides.task", default=None) or []:
        key, _, value = str(override).partition("=")
        if "," in value or "(" in value:
            keys.add(key)
    return keys


class SweepSummary(Callback):
    """Hydra callback: write the sweep summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = write_summary(config.hydra.sweep.dir, OmegaConf.select(config, "objective", default="val/acc"),
                             swept_keys(config))
        if path is not None:
            log.info("Sweep summary: %s (and .md)", path)


def _missing_part(config: DictConfig, key: str) -> str | None:
    """The first part of the dotted ``key`` that ``config`` lacks (``distill`` for ``distill.loss.alpha`` when the
    config has no ``distill`` node; the key itself when only its leaf is missing), or None when an override of
    ``key`` would apply (the key is there, or its node accepts new keys)."""
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):  # a list, or a value: Hydra decides
            return None
        if part not in node.keys():  # (`in node` is False for a ??? value)
            return None if not OmegaConf.is_struct(node) else ".".join(parts[:i + 1])
        if i < len(parts) - 1:
            try:
                node = node[part]
            except Exception:  # noqa: BLE001 (an unresolvable interpolation or ???: Hydra decides)
                return None
    return None


def _unfit_keys(config: DictConfig, keys: Any) -> dict[str, str]:
    """The search-space ``keys`` that would not apply to ``config``: key -> the part it lacks. Config group choices
    (``model``, ``hydra/launcher``) and additions (``+key``, ``~key``) are left to Hydra."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    missing = {}
    for key in keys:
        key = str(key)
        if key.startswith(("+", "~")) or "/" in key or "@" in key or key in choices:
            continue
        part = _missing_part(config, key)
        if part is not None:
            missing[key] = part
    return missing


def _search_params(config_loader: Any, choice: str) -> Any:
    """The ``hydra.sweeper.params`` keys of ``conf/hparams_search/<choice>.yaml`` (None when it has none)."""
    for source in config_loader.get_sources():
        path = f"hparams_search/{choice}"
        if source.is_config(path):
            result = source.load_config(path)
            params = OmegaConf.select(result.config, "hydra.sweeper.params", default=None)
            return list(params.keys()) if params else None
    return None


def check_search_space(config: DictConfig, params: Any, config_loader: Any = None) -> None:
    """Raise a :class:`UserError` when a key of the sweeper's search space (``hydra.sweeper.params``) is not in the
    composed ``config``: Hydra would fail on the first trial with "Key 'distill' is not in struct", after the
    study is created. The message names the missing keys and, given Hydra's ``config_loader``, the other
    ``hparams_search`` choices whose keys all fit."""
    missing = _unfit_keys(config, (params or {}).keys())
    if not missing:
        return
    names = []
    for key, part in missing.items():
        name = key if part == key else f"{part}.*"
        if name not in names:
            names.append(name)
    what = " and ".join(n + " keys" if n.endswith(".*") else n for n in names)
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    current = choices.get("hparams_search")
    searcher = f"hparams_search={current}" if current else "hydra.sweeper.params"
    experiment = choices.get("experiment")
    task_overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=None) or []]
    given = [o for o in task_overrides if o.lstrip("+").startswith("experiment=")]
    owner = given[-1] if given else f"+experiment={experiment}" if experiment else "this config"
    fits = []
    if config_loader is not None:
        for choice in config_loader.get_group_options("hparams_search"):
            keys = _search_params(config_loader, choice)
            if choice != current and keys and not _unfit_keys(config, keys):
                fits.append(f"hparams_search={choice}")
    if fits:
        fix = "use " + " or ".join(fits)
    else:
        fix = "pick an experiment that has them, or drop them from the search (hydra.sweeper.params)"
    raise UserError(f"{searcher} searches {what}, which {owner} does not have; {fix}")


def _optuna_impl():
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
        """hydra-optuna-sweeper's implementation, resumable (see the module docstring)."""

        def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            launch = self.launcher.launch
            objective = OmegaConf.select(config, "objective", default="val/acc")
            logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's sqlite migrations: noise

            def launch_and_summarise(job_overrides, initial_job_idx):
                try:
                    return launch(job_overrides, initial_job_idx=initial_job_idx)
                finally:
                    write_summary(self.sweep_dir, objective, swept_keys(config))

            self.launcher.launch = launch_and_summarise

        def sweep(self, arguments: list[str]) -> None:
            import optuna
            from optuna.trial import TrialState

            with exit_on_user_error():  # before the study or the sweep folder exists: nothing is written
                check_search_space(self.config, self.params, self.hydra_context.config_loader)
            Path(str(self.sweep_dir)).mkdir(parents=True, exist_ok=True)  # sqlite needs the folder
            total = self.n_trials
            if self.storage and self.study_name and self.study_name in {
                    s.study_name for s in optuna.get_all_study_summaries(self.storage)}:
                study = optuna.load_study(study_name=self.study_name, storage=self.storage)
                trials = study.get_trials(deepcopy=False)
                finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
                self.job_idx = len(trials)  # job folder <n> is trial <n>: new trials go to new folders
                for t in trials:
                    if t.state in (TrialState.RUNNING, TrialState.WAITING):  # cut off by the interruption
                        if t.state == TrialState.RUNNING:
                            study._storage.set_trial_state(t._trial_id, TrialState.FAIL)
                            study.enqueue_trial(t.params)
                        log.info("Trial %d was interrupted: its parameters run again", t.number)
                self.n_trials = max(0, total - finished)
                self._reseed(len(trials))
                log.info("Continuing study %s: %d of %d trials finished, %d to go", self.study_name, finished,
                         total, self.n_trials)
            try:
                super().sweep(arguments)
            except ValueError as err:  # optuna's best_trial when no trial completed
                raise RuntimeError(f"no trial of the sweep in {self.sweep_dir} completed: see the jobs' train.log "
                                   "files there and sweep_summary.md") from err

        def _reseed(self, n_trials_before: int) -> None:
            """A seeded sampler re-created for a continued study would replay the first launch's random draws
            (the same parameters again): move its random state on by the number of trials already in the study."""
            import numpy as np

            seed = OmegaConf.select(self.config, "hydra.sweeper.sampler.seed", default=None)
            if seed is None:
                return
            for sampler in (self.sampler, getattr(self.sampler, "_random_sampler", None)):
                if sampler is not None and hasattr(sampler, "_rng"):
                    sampler._rng = np.random.RandomState((int(seed) + 1_000_003 * n_trials_before) % 2**32)

    return ResumableOptunaSweeperImpl


def _sweeper_base():
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as Base

    return Base


class OptunaSweeper(_sweeper_base()):
    """``hydra/sweeper`` target of ``hparams_search=optuna``: hydra-optuna-sweeper, resumable."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # the base's __init__ only builds its implementation
        self.sweeper = _optuna_impl()(*args, **kwargs)

