"""Fixtures that compose the real conf/ and shrink it: tiny model, few batches, CPU, no logger, tmp folders."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from speedtrain.config import compose_config

REPO = Path(__file__).resolve().parents[1]

# A run small enough for a few seconds on 2 cores, on the real embedded data.
TINY_RUN = [
    "logger=none",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "export.enabled=false",  # the export tests turn it on (EXPORT_TINY)
]
TINY_STUDENT = [  # a 1-layer bert_tiny (+experiment=distill would pick model=static)
    "model=bert_tiny",
    "model.num_hidden_layers=1",
    "model.hidden_size=32",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "tokenizer.vocab_size=600",
]
TINY = [*TINY_RUN, *TINY_STUDENT]
# the export callback with a benchmark of a few hundred milliseconds
EXPORT_TINY = [
    "export.enabled=true",
    "export.bench.batch_sizes=[1,8]",
    "export.bench.warmup=2",
    "export.bench.min_reps=20",
    "export.bench.min_time_s=0.05",
    "export.bench.throughput_time_s=0.02",
]
# +experiment=distill (distill=logits_hidden) with a layer map that the 1-layer tiny teacher has
DISTILL_TINY = ["+experiment=distill", "distill.intermediate.layer_map=[[0,0],[1,1]]"]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One speedtrain cache for the whole session (tokenizers and token ids are reused), never ~/.cache.

    Under pytest-xdist each worker process has its own (its own tmp folder): no two processes write one cache.
    """
    cache = tmp_path_factory.mktemp("speedtrain-cache")
    os.environ["SPEEDTRAIN_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["WANDB_MODE"] = "offline"
    return cache


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """Every test leaves the root logger as it found it. A Hydra run in this process (``train.main()``) gives the
    root logger a console handler on the test's captured stdout, closed when the test ends, and a file handler on
    its run's train.log: a later test's log lines would go there ("--- Logging error ---" on stderr, which tests of
    stderr read)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def hydra_config_cleared() -> Iterator[None]:
    """Every test ends with no Hydra run config in this process. A Hydra run here (``train.main()``, ``speedtrain
    train``) leaves ``HydraConfig`` set; code that asks it (``families._chosen_on_command_line``: was ``model=`` on
    the command line?) would read that run's overrides in a later test."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


_THREADS: list[int] = []  # torch's thread count for every test of this process, fixed at the first test


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[None]:
    """Every test starts with the same torch thread count: a benchmark or a runner sets torch's (process-wide)
    count for itself and leaves it so; the next test would otherwise train or compare numbers with another.

    The count: torch's default, or under pytest-xdist that shared out among the workers (2 workers on 2 cores:
    1 thread each, not 2 x 2 threads spinning on 2 cores). Processes the tests start keep torch's default.
    """
    reset_torch_threads()
    yield


def reset_torch_threads() -> None:
    """torch's thread count back to this process's count for tests (see :func:`torch_threads`)."""
    torch = sys.modules.get("torch")  # imported while collecting (test modules import it); else nothing to set
    if torch is not None:
        if not _THREADS:
            workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
            _THREADS.append(max(1, torch.get_num_threads() // workers))
        if torch.get_num_threads() != _THREADS[0]:
            torch.set_num_threads(_THREADS[0])


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``<session tmp>/<name>``, built by ``build(folder)`` once per test session, also under pytest-xdist.

    Each xdist worker is a process with its own session fixtures; the first to get here builds the folder under a
    file lock in the tmp root the workers share, the others wait for it and read the same folder. A build that
    failed leaves no ``.done`` marker: the next one starts again from an empty folder. Tests only read it (copy it
    to change anything).
    """
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>/popen-gw<i> -> the session's pytest-<n>
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            reset_torch_threads()  # a session fixture is set up before the test's own fixtures
            build(folder)
            done.touch()
    return folder


@contextlib.contextmanager
def hydra_process(*argv: str, cwd: Path | None = None) -> Iterator[None]:
    """``python train.py ARGV`` run in this process by calling ``train.main()`` inside: sets ``sys.argv`` (and
    the working folder), and afterwards undoes what a Hydra run leaves behind in a process: the root logger's
    handlers (Hydra adds one writing to the run's ``train.log``) and level, the ``speedtrain`` loggers' levels,
    environment variables, ``sys.argv``, the working folder and Hydra's global state."""
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    handlers, level, env, old_argv, old_cwd = root.handlers[:], root.level, dict(os.environ), sys.argv, os.getcwd()
    loggers = {name: logging.getLogger(name).level for name in list(logging.root.manager.loggerDict)}
    sys.argv = ["train.py", *argv]
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, old in loggers.items():
            logging.getLogger(name).setLevel(old)
        os.environ.clear()
        os.environ.update(env)
        GlobalHydra.instance().clear()


def run_train_py(*argv: str, cwd: Path | None = None) -> None:
    """``python train.py ARGV`` in this process (see :func:`hydra_process`); a non-zero exit raises SystemExit."""
    import train

    with hydra_process(*argv, cwd=cwd):
        train.main()


@pytest.fixture
def make_cfg(tmp_path: Path):
    """``make_cfg(*overrides)`` -> the real config, shrunk by TINY, writing under ``tmp_path/run``.

    ``tiny_student=False`` keeps the model group's own sizes (for a pretrained model).
    """

    def make(*overrides: str, tiny_student: bool = True) -> DictConfig:
        tiny = TINY if tiny_student else TINY_RUN
        return compose_config([*tiny, f"paths.output_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture
def cfg_tiny(make_cfg) -> DictConfig:
    return make_cfg("+experiment=baseline")


def write_csv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("title", "cat")) -> Path:
    """A small CSV with a text and a label column."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def product_rows() -> list[tuple[str, str]]:
    """60 short product titles in 3 categories (made up here for the tests)."""
    kinds = {
        "fruit": ["apple", "banana", "cherry", "mango", "pear"],
        "tools": ["hammer", "wrench", "drill", "saw", "chisel"],
        "shoes": ["sneaker", "boot", "sandal", "loafer", "slipper"],
    }
    adjectives = ["fresh", "red", "large", "small"]
    return [(f"{a} {w}", label) for label, words in kinds.items() for w in words for a in adjectives]


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT (2 labels) with MiniLM's tokenizer, saved as a Hugging Face folder."""

    def build(folder: Path) -> None:
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        from speedtrain.models.teacher import load_tokenizer

        tokenizer = load_tokenizer("minilm")
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
        BertForSequenceClassification(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return shared_folder(tmp_path_factory, "tiny-teacher", build)


@pytest.fixture(scope="session")
def fine_tuned_teacher(tiny_teacher_dir, tmp_path_factory):
    """The tiny teacher fine-tuned on HS chapters by +experiment=teacher: its <run>/model folder."""

    def build(out: Path) -> None:
        from speedtrain.pipeline import run

        run(compose_config([*TINY_RUN, "+experiment=teacher", f"teacher.source={tiny_teacher_dir}",
                            "teacher.max_length=24", "data.eval_batch_size=64", f"paths.output_dir={out}"]))

    return shared_folder(tmp_path_factory, "teacher-run", build) / "model"


# The export callback in a tiny run: its bundle serves the export, serve and notebook tests.
# trained enough to tell classes apart (an untrained model's near-equal logits make agreement meaningless)
TINY_EXPORT_RUN = [*TINY, *EXPORT_TINY, "+experiment=baseline", "export.variants=[onnx,onnx_int8,onnx_fp16,pt2]",
                   "data.label=section", "trainer.max_epochs=4", "trainer.limit_train_batches=25",
                   "module.optimizer.lr=1e-2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path) -> Path:
    """``train.py`` as a user runs it (a real Hydra run folder), with the bundle at ``<run>/bundle``: one run for
    the whole session (every xdist worker reads it), read-only; a test that changes anything copies it first.

    In this process (``train.main()`` with this command line, see :func:`run_train_py`): the same Hydra run as
    ``python train.py ...`` without a second Python start-up. test_train.py checks train.py in a real process."""

    def build(folder: Path) -> None:
        run_train_py(*TINY_EXPORT_RUN, f"teacher.source={tiny_teacher_dir}", "teacher.max_length=24",
                     f"hydra.run.dir={folder / 'run'}", cwd=folder)

    return shared_folder(tmp_path_factory, "export-run", build) / "run"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path) -> Path:
    return tiny_run / "bundle"
