"""Real Lambert W function (branches 0 and -1) with a closed-form derivative.

W solves ``W(z) * exp(W(z)) = z``. On the reals, branch 0 is defined for ``z >= -1/e`` (``W0 >= -1``)
and branch -1 for ``-1/e <= z < 0`` (``W_{-1} <= -1``). The spike-time closed form for
``tau_m = tau_s`` uses branch 0 (the upward threshold crossing).

Implementation: an initial guess (branch-point series near ``-1/e``, asymptotic logs for large
``|log|z||``, ``log1p`` otherwise) refined by a fixed number of Fritsch iterations (fourth order),
so the function is jit/vmap friendly and never differentiated through its iterations; the
derivative ``dW/dz = 1 / (exp(W) (1 + W))`` is supplied with `jax.custom_jvp`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["lambertw"]

# 1/e split into a head and a tail so that ``z + 1/e`` keeps its digits near the branch point.
_INV_E_HI = 0.36787944117144233
_INV_E_LO = -1.2428753672788363e-17
# Series of W around the branch point in p = sqrt(2 (e z + 1)) (Corless et al. 1996, eq. 4.22).
_BRANCH_SERIES = (
    -1.0,
    1.0,
    -1.0 / 3.0,
    11.0 / 72.0,
    -43.0 / 540.0,
    769.0 / 17280.0,
    -221.0 / 8505.0,
    680863.0 / 43545600.0,
    -1963.0 / 204120.0,
    226287557.0 / 37623398400.0,
)
# Fritsch steps per dtype: from the starts below, two reach float32's rounding (max relative error
# 3e-7 away from the branch point, as with three), float64 needs three (1e-15; two give 1e-14).
_FRITSCH_STEPS = {jnp.dtype(jnp.float32): 2, jnp.dtype(jnp.float64): 3}


def _branch_series(p: Array) -> Array:
    out = jnp.zeros_like(p)
    for c in reversed(_BRANCH_SERIES):
        out = out * p + c
    return out


def _fritsch(w: Array, z: Array) -> Array:
    """One Fritsch-Shafer-Crowley step (fourth order); needs ``z / w > 0`` and ``w != -1``."""
    zn = jnp.log(z / w) - w
    q = 2.0 * (1.0 + w) * (1.0 + w + (2.0 / 3.0) * zn) - zn
    eps = zn / (1.0 + w) * (q - zn) / (q - 2.0 * zn)
    return w * (1.0 + eps)


def _lambertw_value(z: Array, branch: int) -> Array:
    dtype = z.dtype
    # Distance to the branch point, e (z + 1/e) >= 0 on the domain.
    dz = (z + _INV_E_HI) + _INV_E_LO
    p2 = 2.0 * jnp.e * dz
    # The float nearest to -1/e lies just below the true branch point: a few ulp below count as it.
    p2 = jnp.where(p2 >= -8 * jnp.finfo(dtype).eps, jnp.maximum(p2, 0.0), p2)
    in_domain = (p2 >= 0) if branch == 0 else ((p2 >= 0) & (z <= 0))
    p = jnp.sqrt(jnp.where(p2 >= 0, p2, 0.0))
    sign = 1.0 if branch == 0 else -1.0
    series = _branch_series(sign * p)
    # |p| below this, the truncated series is exact to the working precision.
    near = p < (0.03 if dtype == jnp.float64 else 0.1)

    if branch == 0:
        # Winitzki-style start, asymptotic logs for large z, the series close to -1/e.
        zp = jnp.where(z > -0.25, z, 1.0)
        l1 = jnp.log1p(zp)
        start_pos = l1 * (1.0 - jnp.log1p(l1) / (2.0 + l1))
        big = z > 3.0
        zl = jnp.where(big, z, 10.0)
        ll = jnp.log(zl)
        lll = jnp.log(ll)
        start_big = ll - lll + lll / ll
        start = jnp.where(z <= -0.25, series, jnp.where(big, start_big, start_pos))
        tiny = jnp.abs(z) < (1e-6 if dtype == jnp.float64 else 1e-3)
        small_series = z * (1.0 - z * (1.0 - 1.5 * z))
    else:
        zn = jnp.where(z < 0, z, -0.1)
        l1 = jnp.log(-zn)
        l2 = jnp.log(-l1)
        start_asym = l1 - l2 + l2 / l1
        start = jnp.where(z < -0.25, series, start_asym)
        tiny = jnp.zeros_like(near)
        small_series = jnp.zeros_like(z)

    # Safe inputs for the iteration: avoid z = 0, w = 0, w = -1 and non-finite values.
    iterate = in_domain & ~near & ~tiny & jnp.isfinite(z) & (z != 0)
    zs = jnp.where(iterate, z, 1.0)
    w = jnp.where(iterate, start, 0.5)
    for _ in range(_FRITSCH_STEPS.get(jnp.dtype(dtype), 3)):
        w = _fritsch(w, zs)

    out = jnp.where(near, series, jnp.where(tiny, small_series, w))
    if branch == 0:
        out = jnp.where(z == 0, 0.0, out)
        out = jnp.where(z == jnp.inf, jnp.inf, out)
    else:
        out = jnp.where(z == 0, -jnp.inf, out)
    out = jnp.where(in_domain | jnp.isnan(z), out, jnp.nan)
    return jnp.where(jnp.isnan(z), jnp.nan, out).astype(dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _lambertw(z: Array, branch: int) -> Array:
    return _lambertw_value(z, branch)


@_lambertw.defjvp
def _lambertw_jvp(branch: int, primals, tangents):
    (z,), (dz,) = primals, tangents
    w = _lambertw(z, branch)
    # dW/dz = W / (z (1 + W)) = 1 / (exp(W) (1 + W)); the second form is used near z = 0. At the
    # infinite ends the limits: W0(inf) = inf has slope 0, W_{-1}(0) = -inf slope -inf (nan stays nan).
    finite = jnp.isfinite(w)
    small = (jnp.abs(z) < 0.5) & finite
    big = ~small & finite
    w_small = jnp.where(small, w, 0.0)
    d_small = 1.0 / (jnp.exp(w_small) * (1.0 + w_small))
    z_big = jnp.where(big, z, 1.0)
    w_big = jnp.where(big, w, 1.0)
    d_big = w_big / (z_big * (1.0 + w_big))
    d_end = jnp.where(w == jnp.inf, 0.0, jnp.where(w == -jnp.inf, -jnp.inf, jnp.nan))
    return w, jnp.where(small, d_small, jnp.where(big, d_big, d_end)) * dz


def lambertw(z: Float[ArrayLike, "*shape"], branch: int = 0) -> Float[Array, "*shape"]:
    r"""Real Lambert W, the inverse of :math:`w \mapsto w e^w`.

    Args:
        z: real input of any shape (float32 or float64; integers are promoted to float).
        branch: ``0`` (principal, :math:`W_0 \ge -1`) or ``-1`` (:math:`W_{-1} \le -1`).

    Returns:
        ``W(z)`` with the dtype of ``z``. Outside the real domain (``z < -1/e`` for both branches,
        ``z > 0`` for branch -1) the result is ``nan``, as there is no real solution; ``W0(inf) =
        inf``, ``W_{-1}(0) = -inf``, and ``nan`` stays ``nan``.

    The derivative :math:`dW/dz = 1/(e^{W}(1+W))` is exact (custom JVP, forward and reverse mode)
    and equals 1 at ``z = 0``; at the branch point ``z = -1/e`` it is infinite.

    Example:
        >>> float(lambertw(1.0))  # the omega constant
        0.5671432...
    """
    if branch not in (0, -1):
        raise ValueError(f"`branch` must be 0 or -1, got {branch!r}.")
    z = jnp.asarray(z)
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.result_type(float))
    return _lambertw(z, branch)
