"""Fixtures shared across test folders: the consumer's virtualenv (packaging and e2e tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.packaging.venvs import CONTRACTS, make_venv, pip_install


@pytest.fixture(scope="session")
def contracts_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding only ``bhiv-core-contracts[typing]`` and its dependencies.

    Installed from the repository's gen/python (the generated distribution) as another service
    would; built once per session.
    """
    python = make_venv(tmp_path_factory.mktemp("contracts-venv") / "venv")
    pip_install(python, f"{CONTRACTS}[typing]")
    return python
