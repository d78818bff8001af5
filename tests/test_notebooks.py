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


def test_training_in_a_notebook_shows_a_progress_bar(tmp_path):
    """A kernel's stderr is not a terminal, yet it shows tqdm's bar in place (a log file gets lines)."""
    book = nbformat.v4.new_notebook()
    book.cells = [
        nbformat.v4.new_code_cell(
            "import sys\n"
            "from fsnn.train.loop import _progress\n"
            "bar = _progress(3, 0, quiet=False)\n"
            "bar.update(1)\n"
            "bar.close()\n"
            "print(type(bar).__module__, sys.stderr.isatty())"
        )
    ]
    NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    streams = book.cells[0].outputs
    out = {name: "".join(o.text for o in streams if o.get("name") == name) for name in ("stdout", "stderr")}
    assert out["stdout"].split() == ["tqdm.std", "False"]
    assert "1/3" in out["stderr"]
