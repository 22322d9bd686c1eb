"""2-D slice enumeration against a dense grid and brute-force counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nets import make, randomize_biases

import lld_jax as L
from lld_jax.slices import TooManyRegions, enumerate_slice, locate, polygon_area

# Exactness against float64 references (see conftest: the suite runs float32 unless a test opts in).
pytestmark = pytest.mark.float64

BOX = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]


def _slice(kind):
    net, params, x = make(kind)
    scale = 1.0 if kind == "mlp" else 0.2  # keep the image nets' slices to a few hundred regions
    a = scale * jax.random.normal(jax.random.key(5), x.shape[1:], x.dtype)
    b = scale * jax.random.normal(jax.random.key(6), x.shape[1:], x.dtype)
    return net, params, x[0], a, b


def _grid_patterns(net, params, x0, a, b, n=120):
    u = np.linspace(-1, 1, n + 2)[1:-1]
    uu, vv = np.meshgrid(u, u)
    pts = np.stack([uu.ravel(), vv.ravel()], 1)
    xs = x0[None] + pts[:, 0].reshape((-1,) + (1,) * x0.ndim) * a[None] + pts[:, 1].reshape((-1,) + (1,) * x0.ndim) * b[None]
    return pts, np.asarray(L.batched.activation_pattern(net, params, jnp.asarray(xs)))


@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet", "cnn_max", "maxout"])
def test_grid_points_match_their_polygon_and_areas_add_up(kind):
    net, params, x0, a, b = _slice(kind)
    regions = enumerate_slice(net, params, x0, a, b, BOX)
    np.testing.assert_allclose(sum(polygon_area(r.vertices) for r in regions), 4.0, rtol=1e-9)
    pts, pats = _grid_patterns(net, params, x0, a, b)
    idx = locate(regions, pts, tol=-1e-9)  # strictly inside only: boundary points are ambiguous
    hit = idx >= 0
    assert hit.mean() > 0.95
    for i in np.flatnonzero(hit):
        assert (regions[idx[i]].pattern == pats[i]).all()
    # Each region is one pattern (convex region = one pattern, no duplicates).
    assert len({r.pattern.tobytes() for r in regions}) == len(regions)
    # The affine output map is exact inside its region.
    i = np.flatnonzero(hit)[0]
    r = regions[idx[i]]
    out = net.apply(params, x0 + pts[i, 0] * a + pts[i, 1] * b)[0]
    np.testing.assert_allclose(r.out_slope @ pts[i] + r.out_offset, out, rtol=1e-9, atol=1e-12)


def test_count_equals_brute_force_on_small_net():
    model = L.models.MLP(2, [4, 4], 1, rngs=nnx.Rngs(2), param_dtype=jnp.float64)
    randomize_biases(model, jax.random.key(3))  # hyperplanes that do not all meet at 0
    net, params = L.from_nnx(model)
    x0, a, b = jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    box = [(-3, -3), (3, -3), (3, 3), (-3, 3)]
    regions = enumerate_slice(net, params, x0, a, b, box)
    u = np.linspace(-3, 3, 1501)
    uu, vv = np.meshgrid(u, u)
    pats = np.asarray(L.batched.activation_pattern(net, params, jnp.asarray(np.stack([uu.ravel(), vv.ravel()], 1))))
    grid_count = len(np.unique(pats, axis=0))
    big = [r for r in regions if polygon_area(r.vertices) > 4 * (u[1] - u[0]) ** 2]
    # Every region larger than a few grid cells is found by the grid, and the grid finds no others.
    assert len(big) <= grid_count <= len(regions)
    assert {r.pattern.tobytes() for r in big} <= {p.tobytes() for p in pats}
    assert {p.tobytes() for p in pats} <= {r.pattern.tobytes() for r in regions}, "a grid point lies in no enumerated region"


def test_region_cap_and_bad_polygon():
    net, params, x0, a, b = _slice("mlp")
    with pytest.raises(TooManyRegions, match="max_regions=2"):
        enumerate_slice(net, params, x0, a, b, BOX, max_regions=2)
    with pytest.raises(ValueError, match="polygon must be"):
        enumerate_slice(net, params, x0, a, b, [(0, 0), (1, 1)])
    with pytest.raises(ValueError, match="share the example shape"):
        enumerate_slice(net, params, x0, a[:3], b, BOX)


@pytest.mark.parametrize("width, depth", [(12, 2), (30, 3)])
def test_region_counts_agree_with_regioncam(width, depth):
    # The compiled peer (Rust, PyPI regioncam; in the test extra) on the same float32 weights and box [-1, 1]^2.
    pytest.importorskip("regioncam", reason='the Regioncam comparison needs pip install -e ".[regioncam]"')
    from benchmarks.regioncam_compare import mlp_weights, ours_count, regioncam_count

    layers = mlp_weights(width, depth, seed=width)
    assert ours_count(layers) == regioncam_count(layers) > 50
