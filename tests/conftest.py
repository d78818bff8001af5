"""Strict numerics for every test: float64 available, no silent dtype or rank promotion.

The tests run small programs, so compiling them costs far more than running them: XLA's LLVM
backend skips its optimisation passes here (``--xla_backend_optimization_level=0``; the same IEEE
arithmetic, compiled ≈ 40 % faster, run slower). Set in ``XLA_FLAGS`` before JAX starts its backend,
so subprocesses (CLI runs, notebook kernels) inherit it. The command line's persistent compilation
cache stays off (one test turns it on in a subprocess).
"""

import os
from pathlib import Path

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
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
    """MNIST prepared once per session (TFDS array_record, from the offline originals, no network)."""
    import socket

    from fsnn.data.images import load_images

    prepared = tmp_path_factory.mktemp("tfds")

    def refuse(*args, **kwargs):
        raise OSError("networking is disabled in the tests")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", refuse)
        mp.setattr(socket, "create_connection", refuse)
        load_images("mnist", data_dir=shared_data_dir, prepared_dir=prepared)
    return prepared
