"""The `speedtrain` console script."""

from __future__ import annotations

import shutil
import subprocess

from speedtrain.cli import main


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0 and "train" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "configs" in out and "cache" in out


def test_console_script_uses_packaged_configs(tmp_path):
    exe = shutil.which("speedtrain")
    assert exe, "pip install -e . installs the speedtrain console script"
    done = subprocess.run([exe, "train", "--cfg", "job", "+experiment=baseline"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "task_name: baseline" in done.stdout and "num_hidden_layers: 2" in done.stdout
