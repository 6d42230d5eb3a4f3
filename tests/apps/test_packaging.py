"""`pip install` of the package: a wheel with the C++ sources and configs, console scripts
that work from outside the checkout.

The wheel is built from a copy of the sources (no build isolation, no download) and
installed without dependencies into a fresh virtualenv that sees the packages of the
Python running the tests, whatever kind it is: a system or conda-like prefix, or a
virtualenv (whose `--system-site-packages` children would see the base interpreter's
packages instead, without the user's dependencies).
"""

import glob
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("setuptools")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(bin dir, site-packages dir, wheel path) of a fresh virtualenv with the wheel installed."""
  root = tmp_path_factory.mktemp("packaging")
  source = root / "source"
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
  for name in ("sfmnet_jax", "configs"):
    shutil.copytree(os.path.join(REPO, name), source / name, ignore=ignore)
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  dist = root / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-q", "-w", str(dist), str(source)], check=True, cwd=root)
  wheel, = glob.glob(str(dist / "*.whl"))
  venv = root / "venv"
  sibling_venv(venv)
  subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                  "--no-index", "--ignore-installed", wheel], check=True)
  site = subprocess.run([str(venv / "bin" / "python"), "-c",
                         "import sfmnet_jax, os; print(os.path.dirname(sfmnet_jax.__file__))"],
                        check=True, capture_output=True, text=True, cwd=root).stdout.strip()
  return venv / "bin", site, wheel


def visible_site_dirs():
  """The site-packages folders this interpreter imports from (its own, its base's when it is
  a virtualenv with system site packages, the user's site when enabled)."""
  dirs = list(site.getsitepackages())
  if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
  return [d for d in dirs if os.path.isdir(d)]


def sibling_venv(venv):
  """A new virtualenv at `venv` whose Python sees this interpreter's packages after its own.

  `python -m venv --system-site-packages` from a virtualenv's Python links the *base*
  interpreter's site-packages, not the virtualenv's; a `.pth` file that adds each of
  `visible_site_dirs()` (their own `.pth` files processed, as at start-up) works from a
  system Python, a conda-like prefix and a virtualenv alike. pip comes from there too.
  """
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  own = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                       check=True, capture_output=True, text=True).stdout.strip()
  lines = [f"import site; site.addsitedir({d!r})" for d in visible_site_dirs()]
  with open(os.path.join(own, "_sfmnet_test_parent_site.pth"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return python


def test_sibling_venv_sees_this_interpreters_packages(tmp_path):
  """The packaging tests' virtualenv imports what this Python imports (absl, pip), and its
  own site-packages come first."""
  python = sibling_venv(tmp_path / "venv")
  out = json.loads(subprocess.run(
      [python, "-c", "import absl, json, pip, sys; "
       "print(json.dumps([absl.__file__, sys.prefix, sys.path]))"],
      check=True, capture_output=True, text=True, cwd=tmp_path).stdout)
  import absl  # pylint: disable=g-import-not-at-top
  assert out[0] == absl.__file__ and out[1] == str(tmp_path / "venv")
  own = [i for i, p in enumerate(out[2]) if p.startswith(str(tmp_path / "venv"))]
  parent = [i for i, p in enumerate(out[2]) if p in visible_site_dirs()]
  assert own and parent and max(own) < min(parent), out[2]


def _run(bin_dir, args, cwd, check=True):
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  env.pop("PYTHONPATH", None)
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  if check:
    assert result.returncode == 0, result.stdout + result.stderr
  return result


def test_wheel_holds_sources_and_configs(installed):
  _, _, wheel = installed
  names = set(zipfile.ZipFile(wheel).namelist())
  for needed in ("sfmnet_jax/cpu/csrc/convs.cc", "sfmnet_jax/cpu/csrc/kernels.h",
                 "sfmnet_jax/cpu/csrc/block_cache.cc", "sfmnet_jax/configs/default.py",
                 "sfmnet_jax/configs/helen_x4.py", "sfmnet_jax/model/generator.py"):
    assert needed in names
  assert not any(n.startswith(("tests/", "configs/")) for n in names)


def test_installed_package_is_used_outside_the_checkout(installed, tmp_path):
  bin_dir, site, _ = installed
  assert not site.startswith(REPO), site
  out = _run(bin_dir, ["python", "-c",
                       "from sfmnet_jax import load_release_weights, SFMNet, accelerate;"
                       "from sfmnet_jax.apps import config_files;"
                       "print(config_files.config_dir())"], cwd=tmp_path).stdout
  assert out.strip() == os.path.join(site, "configs")


def test_console_scripts(installed, tmp_path):
  bin_dir, site, _ = installed
  for script in ("sfmnet-train", "sfmnet-evaluate", "sfmnet-infer", "sfmnet-demo",
                 "sfmnet-datasets", "sfmnet-convert", "sfmnet-benchmark"):
    assert os.access(bin_dir / script, os.X_OK), script

  # The release's weights -> an Orbax checkpoint, from the installed package.
  out = _run(bin_dir, ["sfmnet-convert", str(helpers.FIXTURES / "sfmnet_w16_s32.pth"), str(tmp_path / "converted")],
             cwd=tmp_path)
  assert "wrote" in out.stdout
  assert os.path.isdir(tmp_path / "converted" / "0")

  # Training with an installed config reaches the data and says what is missing.
  result = _run(bin_dir, ["sfmnet-train", f"--config={site}/configs/helen_x4.py",
                          "--config.data.train_dir=/nonexistent/Helen/train",
                          f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, check=False)
  assert result.returncode != 0
  assert "face folder not found: /nonexistent/Helen/train" in result.stderr + result.stdout

  # An unknown weights file is a clear error, not a traceback.
  result = _run(bin_dir, ["sfmnet-convert", str(tmp_path / "missing.pth"), str(tmp_path / "x")],
                cwd=tmp_path, check=False)
  assert result.returncode == 1 and "error:" in result.stderr
