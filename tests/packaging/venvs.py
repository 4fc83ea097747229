"""Fresh virtualenvs for the packaging tests: what another service gets from ``pip install``.

Each venv is made without pip (``venv --without-pip``) and filled by this environment's pip through
``pip --python``, which skips bootstrapping pip into every venv. Installs resolve dependencies from
the configured index (and pip's cache) like any consumer's install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "gen" / "python"

# What a copy of the repository for a build leaves out: environments, data, caches, build output.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".tools", ".data", "__pycache__", "*.pyc", ".*_cache", "build", "dist", "*.egg-info"
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a process of a fresh venv: nothing that puts the repository on its path."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MYPYPATH", "PYTHONHOME"}}
    env |= {"PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return env | extra


def run(
    *args: str | Path, cwd: Path | None = None, timeout: float = 150.0
) -> subprocess.CompletedProcess[str]:
    """Runs a command with :func:`clean_env`; returns it whatever its exit code."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def make_venv(path: Path) -> Path:
    """Creates an empty venv at ``path``; returns its python."""
    done = run(sys.executable, "-m", "venv", "--without-pip", path)
    assert done.returncode == 0, done.stderr
    return path / "bin" / "python"


def pip_install(python: Path, *requirements: str | Path) -> None:
    """Installs ``requirements`` (with their dependencies) into the venv of ``python``.

    ``--no-compile``: byte-compiling every installed module is a fifth of the install's CPU, and the
    tests import few of them.
    """
    done = run(
        sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-compile", *requirements
    )
    assert done.returncode == 0, f"pip install {requirements} failed:\n{done.stdout}\n{done.stderr}"


def copy_sources(target: Path) -> Path:
    """Copies the repository's sources to ``target`` (a setuptools build writes into its tree)."""
    shutil.copytree(ROOT, target, ignore=NOT_SOURCES)
    return target
