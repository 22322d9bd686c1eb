"""Interactive region explorer pages (one self-contained HTML file, opens from disk).

MNIST: the plane through three test digits x_A, x_B, x_C (as experiments.mnist_slice),
{x_A + u (x_B - x_A) + v (x_C - x_A) : u, v >= 0, u + v <= 1}, for one or two run
directories (the page toggles between them). Toy: the two-moons models of
experiments.toy2d (vanilla and relaxed, trained here for ``--steps`` steps) on the data box.
``--screenshot PNG`` also renders the page in headless Chromium (Playwright) with the
hover panel showing.

Run: python -m experiments.explore runs/mnist/vanilla runs/mnist/roll_sampled3_c1 --out runs/explore
     python -m experiments.explore --toy --steps 300 --out runs/explore_toy --screenshot docs/figures/explorer.png
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _cli

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _run_name(cfg: dict, run: str) -> str:
    train = cfg["train"]
    name = "vanilla" if train["lam"] == 0 else f"ROLL lam={train['lam']:g} C={train['C']:g}"
    return f"{name} ({os.path.basename(os.path.normpath(run))})"


def mnist_page(runs: Sequence[str], digits: Sequence[int], data_dir: str | None, max_regions: int) -> tuple[str, dict[str, int]]:
    """The page for one or two MNIST run directories on the triangle through three test digits; (html, region counts)."""
    from experiments.mnist_slice import load_run
    from lld_jax.data import load_mnist
    from lld_jax.slices import explorer_html

    if not 1 <= len(runs) <= 2:
        raise ValueError(f"give one or two run directories (the page toggles between them), got {len(runs)}.")
    test = load_mnist(data_dir, val_size=1).test
    if not all(0 <= d < len(test.x) for d in digits):
        raise ValueError(f"--digits must be indices of test images in [0, {len(test.x)}), got {list(digits)}.")
    loaded = [(run, *load_run(run)) for run in runs]  # every run checked before any work
    models = {_run_name(cfg, run): (net, params) for run, net, params, cfg in loaded}
    if len(models) < len(runs):
        raise ValueError(f"the run directories {list(runs)} are the same run; give two different ones.")
    xa, xb, xc = (jnp.asarray(test.x[i], jnp.float64) for i in digits)
    labels = np.asarray([test.y[i] for i in digits], np.int32)
    title = f"MNIST test digits #{digits[0]}, #{digits[1]}, #{digits[2]} (labels {', '.join(map(str, labels))}) at (u, v) = (0,0), (1,0), (0,1)"
    page = explorer_html(
        models, xa, xb - xa, xc - xa, [(0, 0), (1, 0), (0, 1)], points=[(0, 0), (1, 0), (0, 1)], labels=labels, max_regions=max_regions, title=title
    )
    return page, _region_counts(page)


def toy_page(steps: int, max_regions: int) -> tuple[str, dict[str, int], tuple[float, float]]:
    """The page for the two-moons models of experiments.toy2d (vanilla, relaxed) trained ``steps`` steps; (html, counts, a data point)."""
    from experiments import toy2d
    from lld_jax.slices import explorer_html

    config = toy2d.Config(steps=steps).validate()
    x, y = toy2d.two_moons(config.num_points, config.noise, config.data_seed)
    models = {}
    for name, lam in (("vanilla", 0.0), ("relaxed", config.lambdas[0])):
        t0 = time.time()
        net, params, acc = toy2d.train(config, x, y, lam=lam, regularizer="roll")
        models[name] = (net, params)
        print(f"trained {name} ({steps} steps, train accuracy {acc:.2f}, {time.time() - t0:.0f} s)", flush=True)
    pad = 0.25
    u0, u1, v0, v1 = x[:, 0].min() - pad, x[:, 0].max() + pad, x[:, 1].min() - pad, x[:, 1].max() + pad
    title = f"two moons, FC {'x'.join(map(str, config.widths))}: vanilla vs relaxed (lambda {config.lambdas[0]:g}, C {config.C:g}), {steps} steps"
    page = explorer_html(
        models, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), [(u0, v0), (u1, v0), (u1, v1), (u0, v1)],
        points=x, labels=y, max_regions=max_regions, title=title,
    )  # fmt: skip
    return page, _region_counts(page), (float(x[0, 0]), float(x[0, 1]))


def _region_counts(page: str) -> dict[str, int]:
    import json
    import re

    data = json.loads(re.search(r'<script type="application/json" id="lld-data">(.*?)</script>', page, re.S).group(1))
    return {name: m["numRegions"] for name, m in data["models"].items()}


def screenshot(html_path: str, png_path: str, hover_uv: tuple[float, float], size: tuple[int, int] = (1100, 680)) -> dict[str, float]:
    """Renders the page in headless Chromium with the hover panel at ``hover_uv``; returns load and hover timings (ms)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise OSError("the screenshot needs Playwright: pip install -e '.[browser]' (and apt-get install -y chromium)") from err
    if not os.path.exists("/usr/bin/chromium"):
        raise OSError("the screenshot needs /usr/bin/chromium: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto("file://" + os.path.abspath(html_path))
        page.wait_for_function("window.lldExplorer && window.lldExplorer.drawMs !== null", timeout=120_000)
        load = page.evaluate("window.lldExplorer.drawMs")
        xy = page.evaluate("([u, v]) => window.lldExplorer.uvToScreen(u, v)", list(hover_uv))
        page.mouse.move(xy["x"], xy["y"])
        page.wait_for_selector("#hv-class")
        hover = page.evaluate("window.lldExplorer.lastHoverMs")
        os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
        png = page.screenshot()
        browser.close()
    _write_small_png(png, png_path)
    return {"load_ms": load, "hover_ms": hover}


def _write_small_png(png: bytes, path: str, colours: int = 128) -> None:
    """Writes the screenshot with an adaptive palette (a few times smaller; flat UI colours survive)."""
    try:
        from PIL import Image
    except ImportError:
        with open(path, "wb") as fh:
            fh.write(png)
        return
    import io

    Image.open(io.BytesIO(png)).convert("RGB").quantize(colours, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line; runs in float64 (exact geometry) inside ``jax.enable_x64``, leaving the caller's precision as found."""
    with jax.enable_x64(True):
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dflt = " (default: %(default)s)"
    ap.add_argument("runs", nargs="*", help="one or two run directories written by experiments.mnist (not with --toy)")
    ap.add_argument("--toy", action="store_true", help="the two-moons models of experiments.toy2d instead of MNIST runs")
    ap.add_argument("--steps", type=int, default=1000, help="--toy: full-batch Adam steps per model (toy2d's paper setting: 5000)" + dflt)
    ap.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $LLD_JAX_DATA/mnist, the cache, or a verified download)")
    ap.add_argument("--digits", type=int, nargs=3, default=[0, 1, 2], help="indices of three test images" + dflt)
    ap.add_argument("--max-regions", type=int, default=100_000, help="stop enumerating a slice beyond this many regions" + dflt)
    ap.add_argument("--out", default="runs/explore", help="output directory (explorer.html)" + dflt)
    ap.add_argument("--screenshot", default=None, help="also write a PNG of the page with the hover panel (needs Playwright and Chromium)")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = ap.parse_args(argv)
    if args.toy == bool(args.runs):
        raise ValueError("give either one or two MNIST run directories or --toy (not both, not neither).")
    if args.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {args.steps}.")
    t0 = time.time()
    if args.toy:
        page, counts, hover = toy_page(args.steps, args.max_regions)
    else:
        page, counts = mnist_page(args.runs, args.digits, args.data_dir, args.max_regions)
        hover = (1 / 3, 1 / 3)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "explorer.html")
    with open(path, "w") as fh:
        fh.write(page)
    print(f"{path}: {len(page) / 1e6:.1f} MB, regions {counts}, built in {time.time() - t0:.0f} s", flush=True)
    result = {"path": path, "bytes": len(page), "regions": counts}
    if args.screenshot:
        result.update(screenshot(path, args.screenshot, hover))
        print(f"{args.screenshot}: load {result['load_ms']:.0f} ms, hover {result['hover_ms']:.2f} ms", flush=True)
    return result


if __name__ == "__main__":
    _cli.run(main)
