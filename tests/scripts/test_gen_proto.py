"""The codegen step also generates the contracts distribution's packaging, and checks it for staleness."""

from __future__ import annotations

import importlib.util
import shutil
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen_proto() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_contracts_pyproject_has_the_project_version(gen_proto: ModuleType) -> None:
    generated = tomllib.loads(gen_proto.pyproject())["project"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert (generated["name"], generated["version"]) == ("bhiv-core-contracts", project["version"])
    assert generated["requires-python"] == project["requires-python"]


def test_contracts_dependency_ranges_admit_the_pins_up_to_the_next_major(gen_proto: ModuleType) -> None:
    generated = tomllib.loads(gen_proto.pyproject())["project"]
    requirements = [
        Requirement(r) for r in generated["dependencies"] + generated["optional-dependencies"]["typing"]
    ]
    assert [r.name for r in requirements] == [
        "protobuf", "grpcio", "googleapis-common-protos", "types-protobuf", "grpc-stubs"
    ]  # fmt: skip
    pins = gen_proto.pins()
    for requirement in requirements:
        pinned = pins[requirement.name]
        major = int(pinned.split(".")[0])
        assert requirement.specifier.contains(pinned), requirement
        assert not requirement.specifier.contains(f"{major + 1}.0.0"), requirement


def test_check_reports_a_hand_edited_contracts_pyproject(gen_proto: ModuleType, tmp_path: Path) -> None:
    fresh, committed = tmp_path / "fresh", tmp_path / "committed"
    gen_proto.generate(fresh)
    shutil.copytree(gen_proto.GEN, committed, ignore=shutil.ignore_patterns("__pycache__"))
    assert gen_proto._differences(committed, fresh) == []
    edited = (committed / "pyproject.toml").read_text().replace('"grpcio>=', '"grpcio>=0.1,')
    (committed / "pyproject.toml").write_text(edited)
    assert gen_proto._differences(committed, fresh) == ["stale: pyproject.toml"]
