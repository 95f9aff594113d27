"""train.py as users run it: Hydra's flags, a real run folder and bad input (multirun and DDP: test_sweep.py; W&B
offline: test_resume.py).

Most run ``train.main()`` in this process with the command line in ``sys.argv`` (conftest.run_train_py): the same
Hydra run without a Python start-up each. The last two start a real ``python train.py`` process: its exit codes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import train
from tests.conftest import EXPORT_TINY, REPO, TINY, run_train_py, write_csv


def _cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python train.py ARGS``, with torch's thread count of this process (conftest.torch_threads; 1 under xdist
    on 2 cores): a run here and one there train alike (test_resume.py compares their weights bit for bit)."""
    import torch

    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **(env or {})},
    )


def test_help_and_cfg_job(tmp_path, capsys):
    with pytest.raises(SystemExit) as helped:
        run_train_py("--help", cwd=tmp_path)
    out = capsys.readouterr().out
    assert helped.value.code == 0 and "== Configuration groups ==" in out and "experiment: baseline" in out
    run_train_py("--cfg", "job", "+experiment=baseline", "model=bert_mini", cwd=tmp_path)  # returns: exit code 0
    out = capsys.readouterr().out
    assert "hidden_size: 256" in out and "task_name: baseline" in out
    assert not (tmp_path / "outputs").exists()  # --cfg prints, runs nothing


def test_run_folder_layout(tmp_path, capsys):
    run_train_py("+experiment=baseline", *TINY, cwd=tmp_path)  # a failure raises (SystemExit or the error)
    (run_dir,) = (tmp_path / "outputs").glob("*/*")  # outputs/<date>/<time>, under the working folder
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["objective"] == "val/acc" and "test/acc" in metrics
    assert "test/acc" in capsys.readouterr().out  # the summary table


# Bad input: one clear line naming the value, exit code 2, no traceback. Run in-process through train.main.
def _files(tmp_path: Path, rows, **extra) -> list[str]:
    train_csv = write_csv(tmp_path / "train.csv", rows)
    args = ["data=files", f"data.train={train_csv}", "data.text_column=title", "data.label_column=cat"]
    for key, split_rows in extra.items():
        args.append(f"data.{key}={write_csv(tmp_path / f'{key}.csv', split_rows)}")
    return args


def _touch(path):
    path.touch()
    return path


BAD_INPUTS = {
    "missing_file": (lambda t, r: ["data=files", f"data.train={t / 'nope.csv'}"], r"data.train='.*nope.csv': file not found"),
    "unknown_format": (lambda t, r: ["data=files", f"data.train={write_csv(t / 'x.xlsx', r)}"], r"file extension\(s\) \['.xlsx'\]"),
    "text_column": (lambda t, r: [*_files(t, r), "data.text_column=name"], r"data.text_column='name' is not a column"),
    "label_column": (lambda t, r: [*_files(t, r), "data.label_column=kind"], r"data.label_column='kind' is not a column"),
    "empty_dataset": (lambda t, r: _files(t, []), r"data.train=.*train.csv. has no rows"),
    "empty_split": (lambda t, r: _files(t, r, val=[]), r"data.val=.*val.csv. has no rows"),
    "blank_texts": (lambda t, r: _files(t, [(" ", y) for _, y in r]), "the training data is empty"),
    "one_class": (lambda t, r: _files(t, [(x, "fruit") for x, _ in r]), r"1 label\(s\) \['fruit'\]"),
    "unseen_label": (lambda t, r: _files(t, r, test=[("blue hat", "hats")]), r"test split has label\(s\) \['hats'\]"),
    "lr": (lambda t, r: ["module.optimizer.lr=0"], "module.optimizer.lr=0 must be positive"),
    "batch_size": (lambda t, r: ["data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
    "max_length": (lambda t, r: ["model.max_length=-4"], "data.max_length=-4 must be a positive integer"),
    "missing_value": (lambda t, r: ["data=files"], r"\['data.train'\] are required but not set"),
    # distillation: each fails before any teacher work
    "kd_alpha": (lambda t, r: ["+experiment=distill", "distill.loss.alpha=1.5"], r"distill.alpha=1.5 must be in \[0, 1\]"),
    "kd_temperature": (lambda t, r: ["+experiment=distill", "distill.loss.temperature=0"],
                       r"distill.temperature=0(\.0)? must be positive"),
    "teacher_path": (lambda t, r: ["+experiment=distill", f"teacher.path={t}"], "no Hugging Face model folder there"),
    "unlabeled_missing": (lambda t, r: ["+experiment=distill", f"distill.unlabeled={t / 'nope.csv'}"],
                          r"distill.unlabeled='.*nope.csv': file not found"),
    "unlabeled_empty": (lambda t, r: ["+experiment=distill", f"distill.unlabeled={_touch(t / 'bare.txt')}"],
                        r"distill.unlabeled='.*bare.txt' is an empty file"),
    "unlabeled_column": (lambda t, r: ["+experiment=distill", f"distill.unlabeled={write_csv(t / 'u.csv', r)}"],
                         r"distill.unlabeled_column='text' is not a column of .* its columns are \['title', 'cat'\]"),
    "unlabeled_no_teacher": (lambda t, r: ["+experiment=distill", "teacher=none",
                                           f"distill.unlabeled={write_csv(t / 'u.csv', r)}"],
                             "distill.unlabeled needs a teacher to label its texts"),
    "export_variant": (lambda t, r: ["export.enabled=true", "export.variants=[onnx,tflite]"],
                       r"export.variants: unknown \['tflite'\]"),
    "parity_budget": (lambda t, r: ["export.enabled=true", "export.parity_budget=-1"],
                      r"export.parity_budget=-1(\.0)? must be >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_message_exit_2(case, tmp_path, product_rows, monkeypatch, capsys):
    overrides, message = BAD_INPUTS[case]
    argv = ["train.py", *TINY, *overrides(tmp_path, product_rows), f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("speedtrain: error: "), err
    assert re.search(message, errors[0]), err
    run = tmp_path / "run"  # nothing half-written: no checkpoint, metrics or model
    assert not any((run / name).exists() for name in ("checkpoints", "metrics.json", "model", "teacher")), case


def test_unknown_config_choice(tmp_path):
    done = _cli("+experiment=baseline", "model=bert_huge", cwd=tmp_path)
    assert done.returncode == 1
    assert "Could not find 'model/bert_huge'" in done.stderr and "bert_tiny" in done.stderr


def test_bad_input_exit_code_in_a_real_process(tmp_path):
    done = _cli("+experiment=baseline", "data=files", f"data.train={tmp_path / 'nope.csv'}", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "file not found" in done.stderr
