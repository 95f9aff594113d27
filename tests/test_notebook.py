"""notebooks/quickstart.ipynb runs top to bottom against a tiny bundle."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO


def test_quickstart_notebook_executes(tiny_bundle, monkeypatch):
    monkeypatch.setenv("SPEEDTRAIN_BUNDLE", str(tiny_bundle))
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "live horses for breeding" in text and "variant:" in text and "fast variant" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the benchmark plot
    assert any("text/markdown" in o.get("data", {}) for o in outputs)  # the benchmark table
