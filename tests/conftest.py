"""Strict numerics for every test: float64 available, no silent dtype or rank promotion.

The tests run small programs, so compiling them costs far more than running them: XLA's LLVM
backend skips its optimisation passes here (``--xla_backend_optimization_level=0``; the same IEEE
arithmetic, compiled ≈ 40 % faster, run slower), and XLA:CPU emits fusions with its older LLVM IR
emitters instead of the MLIR ones (``--xla_cpu_use_fusion_emitters=false``: compiled ≈ 2.5× faster
again, the suite 757 → 553 s; three epochs of training, float32 and float64, learned τ included,
end in bit-identical weights either way; an XLA without the option, which would abort on it,
gets only the first). Set in ``XLA_FLAGS`` before JAX starts its backend, so subprocesses (CLI runs,
notebook kernels, pytest-xdist's workers) inherit them; flags already there are left as they are.
The command line's persistent compilation cache stays off (one test turns it on in a subprocess).
"""

import os
import subprocess
import sys
from pathlib import Path


def _xla_accepts(flag: str) -> bool:
    """Whether this jaxlib's XLA knows ``flag`` (in a subprocess: an unknown flag aborts it)."""
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    probe = [sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"]
    return subprocess.run(probe, env=env, capture_output=True).returncode == 0


_flags = os.environ.get("XLA_FLAGS", "").split()
for _flag, _known in (("--xla_backend_optimization_level=0", True), ("--xla_cpu_use_fusion_emitters=false", False)):
    if not any(f.split("=")[0] == _flag.split("=")[0] for f in _flags) and (_known or _xla_accepts(_flag)):
        _flags.append(_flag)
os.environ["XLA_FLAGS"] = " ".join(_flags)
os.environ["FSNN_COMPILATION_CACHE"] = "0"  # CLI runs in the tests write no compiled programs to disk

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The offline data folder: ``$FSNN_DATA_DIR``, set by `.ci/run` to ``../shared/data``."""
    value = os.environ.get("FSNN_DATA_DIR")
    if not value:
        raise RuntimeError(
            "FSNN_DATA_DIR is not set: point it at the folder holding mnist/, fashion_mnist/ and "
            "yinyang/ (in this repository's CI: ../shared/data), e.g. `export FSNN_DATA_DIR=../shared/data`."
        )
    path = Path(value)
    if not path.is_dir():
        raise RuntimeError(f"FSNN_DATA_DIR={value} is not a directory.")
    return path


@pytest.fixture(scope="session")
def mnist_prepared(tmp_path_factory, shared_data_dir) -> Path:
    """MNIST prepared once per session (TFDS array_record, from the offline originals, no network).

    pytest-xdist's workers share one folder: the first to get there prepares, the others wait for its
    lock and read what it wrote (as two runs started together do; `fsnn.data.images.load_images`).
    The preparing one leaves what the preparation printed in ``preparation-output.json``.
    """
    import contextlib
    import io
    import json
    import socket

    from fsnn import locks
    from fsnn.data.images import load_images

    session = tmp_path_factory.getbasetemp()
    prepared = (session.parent if os.environ.get("PYTEST_XDIST_WORKER") else session) / "tfds-mnist"
    prepared.mkdir(exist_ok=True)

    def refuse(*args, **kwargs):
        raise OSError("networking is disabled in the tests")

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, locks.exclusive(prepared / "fixture.lock"):
        mp.setattr(socket, "socket", refuse)
        mp.setattr(socket, "create_connection", refuse)
        first = not (prepared / "preparation-output.json").exists()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            load_images("mnist", data_dir=shared_data_dir, prepared_dir=prepared)
        if first:  # what the preparation printed, for test_images
            output = {"stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
            (prepared / "preparation-output.json").write_text(json.dumps(output))
    assert "tensorflow" not in sys.modules  # where it was prepared (test_images checks where it is read)
    return prepared


@pytest.fixture(scope="session")
def after_busy_device():
    """``f(tree)``: ``tree``, computed only after ≈ 5 s of device work (products of 128 × 128
    matrices; a host callback would run inline, on the caller's thread). Calibrated once; it sizes the
    tests of what an interrupt does while an epoch computes and asserts nothing about speed."""
    import time

    import jax.numpy as jnp

    @jax.jit
    def delayed(tree, n):
        m = jax.lax.fori_loop(0, n, lambda i, m: jnp.tanh(m @ m), jnp.full((128, 128), 0.01, jnp.float32))
        return jax.tree.map(lambda a: a + (0 * m[0, 0]).astype(a.dtype), tree)

    start = time.perf_counter()
    delayed(jnp.zeros(()), 200).block_until_ready()
    n = int(200 * 5.0 / max(time.perf_counter() - start, 1e-3))
    return lambda tree: delayed(tree, n)
