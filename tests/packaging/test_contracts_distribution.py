"""The generated stubs as a distribution another service installs: ``bhiv-core-contracts``.

The README's client (examples/client.py) is type-checked with ``mypy --strict`` against a fresh venv
that holds only the distribution and its declared dependencies (``[typing]`` for the stubs of grpc
and protobuf), with the mypy configuration the README gives. mypy runs from this environment but
resolves every import in the fresh venv (``--python-executable``), so it sees the stubs' types
through their ``py.typed`` markers, not through the repository's gen/python.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.packaging.venvs import ROOT, run

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "client.py"

# Uses the stubs wrongly twice: the wrong request type for an RPC, and a str field returned as int.
WRONG = '''\
"""Misuses the stubs: mypy must refuse it."""

import grpc

from bhiv.identity.v1 import auth_service_pb2, user_service_pb2_grpc


async def next_page_token(channel: grpc.aio.Channel) -> int:
    """Returns the token of the next page of users."""
    users = user_service_pb2_grpc.UserServiceStub(channel)
    reply = await users.ListUsers(auth_service_pb2.LoginRequest(username="admin"))
    return reply.next_page_token
'''


def readme_block(name: str) -> str:
    """Returns the fenced block that follows ``<!-- name -->`` in README.md."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {re.escape(name)} -->\n```[a-z]*\n(.*?)```\n", readme, re.DOTALL)
    assert match, f"README.md has no block marked <!-- {name} -->"
    return match[1]


def mypy(python: Path, folder: Path, source: str) -> tuple[int, str]:
    """Runs ``mypy --strict`` on ``source`` in ``folder`` with the README's configuration."""
    (folder / "pyproject.toml").write_text(readme_block("client-mypy-config"))
    (folder / "module.py").write_text(source)
    done = run(
        sys.executable, "-m", "mypy", "--strict", "--python-executable", python,
        "--config-file", folder / "pyproject.toml", "--cache-dir", folder / ".mypy_cache", "module.py",
        cwd=folder,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_readme_client_is_examples_client_py() -> None:
    assert readme_block("client-example") == EXAMPLE.read_text()


def test_readme_client_passes_mypy_strict_against_the_installed_stubs(
    contracts_python: Path, tmp_path: Path
) -> None:
    code, output = mypy(contracts_python, tmp_path, EXAMPLE.read_text())
    assert code == 0, output
    assert "Success: no issues found in 1 source file" in output


def test_misusing_the_installed_stubs_fails_mypy_strict(contracts_python: Path, tmp_path: Path) -> None:
    code, output = mypy(contracts_python, tmp_path, WRONG)
    assert code == 1, output
    # Both errors come from the stubs' types, and nothing is missing or untyped.
    assert '"LoginRequest"; expected "ListUsersRequest"  [arg-type]' in output, output
    assert 'Incompatible return value type (got "str", expected "int")  [return-value]' in output, output
    assert "Found 2 errors in 1 file" in output, output


def test_the_distribution_marks_every_generated_package_typed(contracts_python: Path) -> None:
    done = run(contracts_python, "-c", "import bhiv, pathlib; print(*bhiv.__path__)")
    assert done.returncode == 0, done.stderr
    (installed,) = map(Path, done.stdout.split())
    assert installed.parent.name == "site-packages", installed
    packages = {p.parent for p in installed.rglob("*_pb2.py")}
    assert packages and packages == {p.parent for p in installed.rglob("py.typed")}
