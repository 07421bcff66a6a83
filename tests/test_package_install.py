"""The installed package stands on its own: its wheel, in a fresh virtual environment.

The module fixture builds the wheel from a copy of the source tree (`pip wheel --no-deps
--no-build-isolation`, offline), installs it with `--no-deps` into a new virtual environment, and
makes this test environment's packages (TensorFlow, Keras, ...) visible to it through one `.pth`
line naming this environment's site-packages. A directory added by a `.pth` line is not a site
directory, so the `.pth` files inside it, among them the editable install's finder of a source
checkout, are not run there. Every child runs from an empty working directory without
PYTHONPATH, so only what the wheel installed can be imported; the first test asserts it.
Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

# The real checkout (under Bazel this file is a symlink in the runfiles tree, which does not hold
# everything a wheel is built from: README.md, LICENSE).
SOURCE_ROOT = Path(os.path.realpath(__file__)).parent.parent
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE")
PACKAGES = ("keras_bninception", "trainers")
# Files other than Python modules that the package reads at run time (those present in the
# checkout must be in the wheel).
RUNTIME_DATA = ("keras_bninception/resources/imagenet_class_index.json",)
ENTRY_POINTS = {
    # entry point: a flag its --help must list
    "bninception-train": "--model_dir",
    "bninception-export": "--export_dir",
    "bninception-classify": "--top_k",
}
TIMEOUT = 600  # seconds for one child process on a loaded 2-core machine
DIGIT_NAMES = {str(i) for i in range(10)}


def _clean_env() -> dict[str, str]:
    """This process's environment without PYTHONPATH (nor any other PYTHON* variable: the checkout
    on the path would make pip and Python find the source tree) and without TF_CONFIG."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "TF_CONFIG"}


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None):
    """Runs `command`; fails the test with its output unless it exits with status 0."""
    result = subprocess.run(
        command,
        cwd=cwd,
        env=_clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


class InstalledPackage:
    """The fresh virtual environment holding the wheel, and how to run commands in it."""

    def __init__(self, root: Path, wheel: Path, workdir: Path):
        self.root = root
        self.wheel = wheel
        self.workdir = workdir  # an empty directory: the children's working directory
        self.bin = root / "bin"

    def env(self) -> dict[str, str]:
        env = _clean_env()
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["KERAS_BACKEND"] = "tensorflow"
        return env

    def run(self, *command: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        args = [str(c) for c in command]
        assert Path(args[0]).exists(), f"the wheel installs no {Path(args[0]).name} script"
        if check:
            return _run(args, self.workdir, self.env())
        return subprocess.run(
            args,
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess:
        return self.run(self.bin / "python", "-c", code)


def _copy_source(destination: Path) -> None:
    """What a wheel is built from, copied so the build leaves nothing in the checkout."""
    for name in BUILD_FILES:
        assert (SOURCE_ROOT / name).is_file(), f"{SOURCE_ROOT / name} is missing"
        shutil.copy(SOURCE_ROOT / name, destination / name)
    for package in PACKAGES:
        shutil.copytree(
            SOURCE_ROOT / package,
            destination / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info"),
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> InstalledPackage:
    import setuptools

    # pyproject.toml's `license = "Apache-2.0"` (an SPDX expression) needs setuptools >= 77.
    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"building the wheel needs setuptools>=77, found {setuptools.__version__}"
    work = tmp_path_factory.mktemp("package_install")
    source, dist, workdir = work / "source", work / "dist", work / "cwd"
    for path in (source, dist, workdir):
        path.mkdir()
    _copy_source(source)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--quiet", "--wheel-dir", str(dist), str(source)],
        cwd=work,
    )
    (wheel,) = dist.glob("keras_bninception-*.whl")

    root = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=work)
    python = root / "bin" / "python"
    # This environment's pip, run by the new interpreter: it sees only the new environment.
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", str(wheel)],
        cwd=work,
    )
    site_packages = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=workdir,
    ).stdout.strip()
    ours = sysconfig.get_paths()
    lines = dict.fromkeys([ours["purelib"], ours["platlib"]])  # TensorFlow, Keras, ...
    Path(site_packages, "_test_environment.pth").write_text("".join(f"{p}\n" for p in lines))
    return InstalledPackage(root, wheel, workdir)


def test_wheel_holds_the_code_its_data_and_the_license(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for package in PACKAGES:
        for path in (SOURCE_ROOT / package).rglob("*.py"):
            relative = path.relative_to(SOURCE_ROOT).as_posix()
            if "__pycache__" not in relative:
                assert relative in names, f"{relative} is not in {installed.wheel.name}"
    for relative in RUNTIME_DATA:
        if (SOURCE_ROOT / relative).exists():
            assert relative in names, f"{relative} is not in {installed.wheel.name}"
    assert not [n for n in names if n.endswith(".so")], "a compiled library is in the wheel"
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(installed.wheel).read(info).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_installed_package_imports_from_the_venv_alone(installed):
    result = installed.python(
        "import importlib.util, json, sys\n"
        "import numpy as np\n"
        "import keras_bninception, trainers\n"
        "model = keras_bninception.BNInception(\n"
        "    weights=None, input_shape=(32, 32, 3), classes=10, depth_multiplier=0.25)\n"
        "probs = np.asarray(model(np.zeros((2, 32, 32, 3), np.float32)))\n"
        "top = keras_bninception.decode_predictions(np.eye(1000, dtype=np.float32)[:1], top=1)\n"
        "print(json.dumps({\n"
        "    'keras_bninception': keras_bninception.__file__,\n"
        "    'trainers': trainers.__file__,\n"
        "    'meta_path': [repr(f) for f in sys.meta_path],\n"
        "    'sys_path': sys.path,\n"
        "    'shape': probs.shape, 'sums': probs.sum(1).tolist(),\n"
        "    'class_0': list(top[0][0][:2]),\n"
        "}))\n"
    )
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    root = str(installed.root) + os.sep
    assert answer["keras_bninception"].startswith(root), answer["keras_bninception"]
    assert answer["trainers"].startswith(root), answer["trainers"]
    assert not [f for f in answer["meta_path"] if "editable" in f.lower()], answer["meta_path"]
    assert str(SOURCE_ROOT) not in answer["sys_path"]
    assert answer["shape"] == [2, 10]
    np.testing.assert_allclose(answer["sums"], 1.0, atol=1e-5)
    # decode_predictions reads the ImageNet class index shipped as package data.
    assert answer["class_0"] == ["n01440764", "tench"]


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_entry_point_help(installed, entry_point):
    result = installed.run(installed.bin / entry_point, "--help", check=False)
    # absl's --help exits with status 1 after printing the usage; anything else is a failure.
    assert result.returncode in (0, 1), f"{result.stdout}\n{result.stderr}"
    assert ENTRY_POINTS[entry_point] in result.stdout, f"{result.stdout}\n{result.stderr}"


def test_train_export_classify_through_the_entry_points(installed):
    run_dir = installed.workdir / "run"
    export_dir = installed.workdir / "export"
    result = installed.run(
        installed.bin / "bninception-train",
        "--dataset=digits",  # embedded in scikit-learn: no download
        "--image_size=32",
        "--depth_multiplier=0.25",
        "--batch_size=16",
        "--train_steps=2",
        "--log_every=1",
        "--mode=train",
        "--seed=3",
        f"--model_dir={run_dir}",
    )
    assert "Done: step 2 of 2." in result.stdout, result.stdout
    assert list((run_dir / "checkpoints").iterdir())

    installed.run(
        installed.bin / "bninception-export",
        f"--model_dir={run_dir}",
        f"--export_dir={export_dir}",
        "--formats=float32",
    )
    (tflite,) = export_dir.glob("*_float32.tflite")
    assert (export_dir / "labels.txt").read_text().split() == [str(i) for i in range(10)]

    image = installed.workdir / "digit.png"
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    result = installed.run(
        installed.bin / "bninception-classify", f"--tflite={tflite}", "--top_k=3", "--json", image
    )
    answer = json.loads(result.stdout)
    assert answer["errors"] == [], result.stdout
    (image_result,) = answer["results"]
    assert image_result["image"] == str(image)
    predictions = image_result["predictions"]
    assert len(predictions) == 3, result.stdout
    assert {p["label"] for p in predictions} <= DIGIT_NAMES, result.stdout
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True), result.stdout
    assert all(0.0 <= p <= 1.0 for p in probabilities), result.stdout
