"""The pip path, as a new user takes it: the wheel built from this repository, installed into a fresh virtual
environment, serves the shipped model from any directory, and installs no top-level module as generic as
`service` or `training`.

The fresh environment gets the project's dependencies from the test's own environment (a path line in a .pth
file, which does not run that environment's editable-install hook), so the test needs no package index.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from xraysr.service.tools.local_server import free_port, wait_until_ready

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_dirs() -> dict[str, str]:
    """Each top-level folder pyproject.toml maps into the package, by the package it becomes."""
    return pyproject()["tool"]["setuptools"]["package-dir"]


def test_every_package_folder_is_listed_and_nothing_is_a_link() -> None:
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {"xraysr.engines"}
    for package, folder in package_dirs().items():
        for init in (REPO / folder).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                relative = init.parent.relative_to(REPO / folder).parts
                found.add(".".join((package, *relative)))
    assert listed == found
    tracked = subprocess.run(
        ["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    links = [line.split("\t")[-1] for line in tracked if line.startswith("120000")]
    assert links == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
         str(REPO)],  # fmt: skip
        check=True,
        timeout=300,
    )
    (built,) = out.glob("xraysr-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],  # fmt: skip
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "xraysr_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith(("XRAYSR_", "PYTHON"))}


def test_the_wheel_holds_one_package_and_the_default_model(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"xraysr", wheel.name.split("-py3")[0] + ".dist-info"}
    for module in ("__init__.py", "py.typed", "service/app.py", "service/api/upscale.py", "training/train.py"):
        assert f"xraysr/{module}" in names
    assert "xraysr/service/web/app.js" in names
    for file in ("manifest.json", "manifest.int8.json", "encoder.onnx", "unet.onnx", "unet.int8.onnx", "decoder.onnx"):
        assert f"xraysr/engines/cxr-default/{file}" in names
        assert zipfile.ZipFile(wheel).getinfo(f"xraysr/engines/cxr-default/{file}").file_size > 0


def test_generic_names_are_not_installed(fresh_env: Path) -> None:
    python = str(fresh_env / "venv" / "bin" / "python")
    for module in ("service", "training"):
        result = subprocess.run(
            [python, "-c", f"import {module}"], cwd=fresh_env, env=clean_environment(), capture_output=True, text=True
        )
        assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr, module
    where = subprocess.run(
        [python, "-c", "import xraysr.service; print(xraysr.service.__file__)"],
        cwd=fresh_env,
        env=clean_environment(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(fresh_env / "venv") in where  # the installed copy, not this checkout


@pytest.fixture()
def served_from_elsewhere(fresh_env: Path, tmp_path: Path) -> Iterator[str]:
    """`xraysr serve` with no flags but a port, from a directory that holds no engines/ folder."""
    port = free_port()
    elsewhere = fresh_env / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(fresh_env / "venv" / "bin" / "xraysr"), "serve", "--port", str(port)],
            cwd=elsewhere,
            env=clean_environment(),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, timeout=120, log=log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_xraysr_serve_serves_the_packaged_model_from_any_directory(served_from_elsewhere: str) -> None:
    ready = httpx.get(f"{served_from_elsewhere}/readyz", timeout=5).json()
    assert (ready["model"], ready["status"]) == ("cxr-default", "ready")
    lr = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    body = io.BytesIO()
    Image.fromarray(lr).save(body, format="PNG")
    answer = httpx.post(
        f"{served_from_elsewhere}/upscale",
        params={"steps": 20, "samples": 1, "seed": 0},
        content=body.getvalue(),
        headers={"Content-Type": "image/png"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert Image.open(io.BytesIO(answer.content)).size == (256, 256)
    assert answer.headers["X-Model-Version"] == ready["version"]
    # The web page's assets are package data too.
    for path in ("/", "/ui/app.js", "/ui/panels.js", "/ui/style.css"):
        assert httpx.get(f"{served_from_elsewhere}{path}", timeout=5).status_code == 200, path
