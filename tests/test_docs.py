"""The README's examples run; the API reference builds without warnings; the code is lint-clean."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = readme_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the training example writes runs/readme_example here
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert scope["eps_all"].shape == (64,) and scope["res"].radius.shape == (64,)
    assert len(scope["history"]) == 1 and (tmp_path / "runs" / "readme_example" / "metrics.jsonl").exists()


def test_api_reference_builds_without_warnings(tmp_path):
    # Autosummary writes its stub pages beside the sources: build from a copy, so the source tree stays untouched.
    src = tmp_path / "docs"
    shutil.copytree(os.path.join(ROOT, "docs"), src, ignore=shutil.ignore_patterns("_build", "_autosummary", "results", "figures"))
    before = sorted(os.listdir(os.path.join(ROOT, "docs")))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-q",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(src),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(ROOT, "docs"))) == before
    assert (tmp_path / "html" / "_autosummary" / "lld_jax.margin.html").exists()


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    ruff = ruff if os.path.exists(ruff) else shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[test]'"
    out = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
