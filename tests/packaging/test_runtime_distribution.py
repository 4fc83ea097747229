"""``pip install .`` of the repository is a working runtime: bhiv_core, the contracts, the dependencies.

A copy of the sources is installed into a fresh venv with its declared dependencies (the pins of
requirements.txt, read by pyproject.toml), then a service is started from that venv alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bhiv_core.mesh import free_port
from tests.packaging.venvs import clean_env, copy_sources, make_venv, pip_install, run

pytestmark = pytest.mark.slow

IMPORTS = "import bhiv_core, bhiv.identity.v1.auth_service_pb2_grpc, bhiv_core.services.crm.server"


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv where ``pip install .`` of the repository was run."""
    folder = tmp_path_factory.mktemp("runtime-venv")
    python = make_venv(folder / "venv")
    pip_install(python, copy_sources(folder / "repo"))
    return python


def test_pip_install_of_the_repository_imports_bhiv_core_and_the_contracts(
    runtime_python: Path, tmp_path: Path
) -> None:
    done = run(runtime_python, "-c", f"{IMPORTS}; print(bhiv_core.__file__, *bhiv.__path__)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # Both come from the venv, not from the repository's src/ and gen/python.
    assert all(Path(p).parent.name == "site-packages" for p in done.stdout.split()[1:]), done.stdout
    assert Path(done.stdout.split()[0]).parents[1].name == "site-packages", done.stdout


@contextlib.contextmanager
def started(python: Path, module: str, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Runs ``python -m module`` and stops it (SIGTERM, then SIGKILL) on the way out."""
    proc = subprocess.Popen(
        [str(python), "-m", module], env=clean_env(**env), cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_identity_serves_from_the_installed_runtime(runtime_python: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "BHIV_HOST": "127.0.0.1",
        "BHIV_IDENTITY_PORT": str(port),
        "BHIV_IDENTITY_METRICS_PORT": "0",
        "BHIV_DATA_DIR": str(tmp_path / "data"),
        "BHIV_SCRYPT_LOG_N": "12",
    }
    with started(runtime_python, "bhiv_core.services.identity", env, tmp_path) as proc:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            status = None
            while status != health_pb2.HealthCheckResponse.SERVING and loop.time() < deadline:
                assert proc.poll() is None, f"identity exited with {proc.returncode}"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
                await asyncio.sleep(0.1)
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_the_installed_runtime_ships_the_sample_corpus_and_loads_the_dense_model_offline(
    runtime_python: Path, tmp_path: Path
) -> None:
    script = (
        "from bhiv_core.knowledge.corpus import SAMPLES, read_sample\n"
        "from bhiv_core.knowledge.dense import load_embedder\n"
        "assert all(read_sample(s).startswith('# ') for s in SAMPLES)\n"
        "embedder = load_embedder()\n"
        "assert embedder is not None\n"
        "print(len(SAMPLES), embedder.embed(['dharma and karma']).shape)\n"
    )
    done = run(runtime_python, "-c", script, cwd=tmp_path)
    assert done.stdout.split() == ["6", "(1,", "256)"], done.stdout + done.stderr


def test_the_installed_runtime_ships_the_router_training_set_and_trains_it(
    runtime_python: Path, tmp_path: Path
) -> None:
    script = (
        "from bhiv_core.agents.router import Router\n"
        "route = Router().route('Tell me about Ayurveda')\n"
        "print(route.agent, route.intent)\n"
    )
    done = run(runtime_python, "-c", script, cwd=tmp_path)
    assert done.stdout.split() == ["wellness", "wellness"], done.stdout + done.stderr
