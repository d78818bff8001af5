"""Every notebook runs top to bottom (small-size switch on) and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, mnist_prepared):
    book = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "strip outputs"
    monkeypatch.setenv("FSNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("FSNN_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(mnist_prepared))  # MNIST prepared once per test session
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert figures, "each notebook should show at least one figure"
