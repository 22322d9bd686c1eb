"""The region explorer page: its exact hover values against lld_jax's own functions, and the page in headless Chromium."""

import io
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import MNIST_DIR
from flax import nnx
from nets import randomize_biases

import lld_jax as L
from experiments import _cli, explore, mnist
from lld_jax._src.explorer import payload_values, slice_payload
from lld_jax.slices import explorer_html

pytestmark = pytest.mark.float64
BOX = [(-2.0, -2.0), (2.0, -2.0), (2.0, 2.0), (-2.0, 2.0)]
CHROMIUM = os.environ.get("LLD_JAX_CHROMIUM", "/usr/bin/chromium")
ENABLE = "apt-get install -y chromium and pip install -e '.[browser]' (playwright; never 'playwright install')"


def _model(seed, dim=5, widths=(8, 8), out=3):
    model = L.models.MLP(dim, list(widths), out, rngs=nnx.Rngs(seed), param_dtype=jnp.float64)
    randomize_biases(model, jax.random.key(seed + 1))  # hyperplanes that do not all meet at 0
    return L.from_nnx(model)


def _plane(dim=5):
    # A 2-D slice of a 5-D input: the margins and d_D are in the full input space, not in the plane.
    return tuple(jax.random.normal(jax.random.key(10 + i), (dim,), jnp.float64) for i in range(3))


def _reference(net, params, x):
    """(class, logits, Margin, certified lower) from lld_jax's independent per-example functions."""
    f = np.asarray(net.apply(params, x)[0])
    cls = int(np.argmax(f))
    return cls, f, L.margin_with_neuron(net, params, x, p=2), float(L.certified_radius(net, params, x, cls, p=2).lower)


def test_hover_values_equal_the_library_margin_logits_and_certificate():
    net, params = _model(6)
    x0, a, b = _plane()
    p = slice_payload(net, params, x0, a, b, BOX)
    assert len(p.hashes) > 20 and len(set(p.fill_class.tolist())) == 3 and len(p.boundary) > 0
    assert len(p.cand_neuron) < 16 * len(p.hashes)  # the vertex test prunes neurons
    classes = set()
    for u, v in np.random.default_rng(0).uniform(-2, 2, (50, 2)):
        got = payload_values(p, u, v)
        cls, f, m, lower = _reference(net, params, x0 + u * a + v * b)
        classes.add(cls)
        assert got["cls"] == cls
        np.testing.assert_allclose(got["logits"], f, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["margin"], float(m.radius), rtol=1e-9)
        assert (got["layer"], got["unit"]) == (int(m.layer), int(m.neuron))
        # certified_radius's lower carries the same 64-epsilon slack (its documented rounding room).
        np.testing.assert_allclose(got["certified"], lower, rtol=1e-9)
    assert classes == {0, 1, 2}
    assert payload_values(p, 2.5, 0.0) is None  # outside the polygon: no number


def test_single_logit_model_uses_the_logit_as_decision_function():
    net, params = _model(0, dim=2, widths=(6, 6), out=1)  # both classes, no dead region among the points
    x0, a, b = jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    p = slice_payload(net, params, x0, a, b, BOX)
    classes = set()
    for u, v in np.random.default_rng(1).uniform(-2, 2, (20, 2)):
        x = jnp.array([u, v])
        got = payload_values(p, u, v)
        f = float(net.apply(params, x)[0][0])
        g = float(jnp.linalg.norm(jax.grad(lambda t: net.apply(params, t)[0][0])(x)))
        margin = float(L.margin(net, params, x, p=2))
        assert got["cls"] == int(f > 0) and g > 0
        classes.add(got["cls"])
        np.testing.assert_allclose(got["margin"], margin, rtol=1e-9)
        np.testing.assert_allclose(got["boundary_distance"], abs(f) / g, rtol=1e-9)
        np.testing.assert_allclose(got["certified"], min(margin, abs(f) / g), rtol=1e-9)
    assert classes == {0, 1}


def test_bad_input_names_the_problem_and_the_fix():
    net, params = _model(6)
    x0, a, b = _plane()
    with pytest.raises(ValueError, match="non-empty mapping"):
        explorer_html({}, x0, a, b, BOX)
    with pytest.raises(ValueError, match="at most two models.*pass one or two"):
        explorer_html({"a": (net, params), "b": (net, params), "c": (net, params)}, x0, a, b, BOX)
    with pytest.raises(ValueError, match=r"must be a pair \(net, params\)"):
        explorer_html({"a": net}, x0, a, b, BOX)
    with pytest.raises(ValueError, match=r"points must be a \(P, 2\)"):
        explorer_html({"a": (net, params)}, x0, a, b, BOX, points=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="labels must be"):
        explorer_html({"a": (net, params)}, x0, a, b, BOX, points=np.zeros((3, 2)), labels=[0, 1])
    with pytest.raises(ValueError, match="share the example shape"):
        explorer_html({"a": (net, params)}, x0, a[:3], b, BOX)


def test_mnist_cli_writes_the_page_and_rejects_bad_arguments(tmp_path, capsys):
    cfg = mnist.Config(data_dir=MNIST_DIR, train_size=128, val_size=64, test_size=64, widths=(12, 10), epochs=1, progress=False)
    mnist.train_and_evaluate(cfg, str(tmp_path / "run"))
    out = explore.main([str(tmp_path / "run"), "--data-dir", MNIST_DIR, "--digits", "0", "1", "2", "--out", str(tmp_path / "page")])
    html = (tmp_path / "page" / "explorer.html").read_text()
    assert out["regions"] and all(n >= 1 for n in out["regions"].values()) and "http://" not in html and "https://" not in html
    for argv, message in [
        ([], "either one or two MNIST run directories or --toy"),
        (["--toy", "x"], "not both"),
        (["--toy", "--steps", "0"], "--steps"),
    ]:
        with pytest.raises(SystemExit):
            _cli.run(explore.main, argv + ["--out", str(tmp_path / "bad")])
        assert message in capsys.readouterr().err


def _browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason=f"the browser test needs Playwright: {ENABLE}")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"the browser test needs Chromium at {CHROMIUM} (or set LLD_JAX_CHROMIUM): {ENABLE}")
    return sync_api


def _shown(page, sel):
    return page.inner_text(sel).strip()


def test_page_in_headless_chromium_shows_the_library_values(tmp_path):
    sync_api = _browser()
    models = {"A": _model(6), "B": _model(7)}
    x0, a, b = _plane()
    pts = np.random.default_rng(2).uniform(-2, 2, (12, 2))
    html = explorer_html(models, x0, a, b, BOX, points=pts, labels=np.arange(12) % 3, title="test page")
    path = tmp_path / "explorer.html"
    path.write_text(html)
    probe = [(0.3, -0.7), (-1.2, 0.9), (1.1, 1.4)]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=explore.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            errors, requests = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            page.wait_for_function("window.lldExplorer && window.lldExplorer.drawMs !== null", timeout=60_000)
            assert page.evaluate("window.lldExplorer.regionCounts") == {n: len(slice_payload(*m, x0, a, b, BOX).hashes) for n, m in models.items()}
            for name in ("A", "B"):
                page.click(f"#modelButtons button[data-model='{name}']")
                net, params = models[name]
                for u, v in probe:
                    xy = page.evaluate("([u, v]) => window.lldExplorer.uvToScreen(u, v)", [u, v])
                    page.mouse.move(xy["x"], xy["y"])
                    uv = page.evaluate("window.lldExplorer.hoverUV()")  # the exact (u, v) under the mouse
                    cls, _, m, lower = _reference(net, params, x0 + uv["u"] * a + uv["v"] * b)
                    assert _shown(page, "#panel").startswith(name)
                    assert int(_shown(page, "#hv-class")) == cls
                    assert float(_shown(page, "#hv-margin")) == pytest.approx(float(m.radius), rel=1e-5)  # 6 significant digits shown
                    assert float(_shown(page, "#hv-certified")) == pytest.approx(lower, rel=1e-5)
                    js = page.evaluate("([u, v, n]) => window.lldExplorer.valuesAt(u, v, n)", [uv["u"], uv["v"], name])
                    assert js["cls"] == cls and js["margin"] == pytest.approx(float(m.radius), rel=1e-9)
                    assert (js["layer"], js["unit"]) == (int(m.layer), int(m.neuron))
                    assert js["certified"] == pytest.approx(lower, rel=1e-9)
            a_vals = page.evaluate("window.lldExplorer.valuesAt(0.3, -0.7, 'A')")
            b_vals = page.evaluate("window.lldExplorer.valuesAt(0.3, -0.7, 'B')")
            assert a_vals["margin"] != b_vals["margin"]  # the toggle shows another model's values
            xy = page.evaluate("window.lldExplorer.uvToScreen(2.3, 0)")
            page.mouse.move(xy["x"], xy["y"])
            assert _shown(page, "#hv-class") == "outside"
            page.click("#modelButtons button[data-model='A']")
            xy = page.evaluate("window.lldExplorer.uvToScreen(0.3, -0.7)")
            page.mouse.move(xy["x"], xy["y"])
            png = page.screenshot()
            seg = np.asarray(slice_payload(*models["A"], x0, a, b, BOX).boundary)
            mids = [page.evaluate("([u, v]) => window.lldExplorer.uvToScreen(u, v)", [(s[0] + s[2]) / 2, (s[1] + s[3]) / 2]) for s in seg[:20]]
        finally:
            browser.close()
    assert not errors, errors
    assert requests == [path.as_uri()], f"the page requested {requests}"
    import matplotlib.image

    img = (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(int)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 20, "the screenshot is nearly blank"
    # Decision-boundary pixels (black, 2.2 px) at the midpoints of the boundary segments.
    dark = [img[int(m["y"]) - 1 : int(m["y"]) + 2, int(m["x"]) - 1 : int(m["x"]) + 2].min() < 60 for m in mids]
    assert np.mean(dark) > 0.9, dark


def test_payload_is_compact_base64():
    net, params = _model(6)
    x0, a, b = _plane()
    html = explorer_html({"A": (net, params)}, x0, a, b, BOX)
    data = json.loads(re.search(r'id="lld-data">(.*?)</script>', html, re.S).group(1))
    m = data["models"]["A"]
    assert m["numRegions"] > 20 and set(m["candAffine"]) == {"dtype", "b64"}
    assert len(html) < 20_000 + 700 * m["numRegions"]  # bytes per region, not one JSON object each
    assert "<script src" not in html and "http" not in html
