"""The README's Python examples run as printed (the training one for 2 epochs instead of 50)."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README lost its Python examples"
    code = "\n".join(blocks)
    assert code.count('{"epochs": 50}') == 1  # what this test shortens
    monkeypatch.chdir(tmp_path)  # (it trains into runs/demo)
    namespace = {}
    exec(compile(code.replace('{"epochs": 50}', '{"epochs": 2}'), "README.md", "exec"), namespace)
    results, answers, y = namespace["results"], np.asarray(namespace["answers"]), np.asarray(namespace["y"])
    assert answers.shape == y.shape and answers.min() >= -1 and answers.max() < 3
    assert np.mean(answers == y) == pytest.approx(results["test_accuracy"], abs=1e-6)  # decides as it was tested
    t_out, grads = namespace["t_out"], namespace["grads"]
    assert t_out.shape == (2,) and grads.shape == (3, 2) and np.all(np.isfinite(grads))
