"""The contracts as data: every ``bhiv.*`` service and method, read from the generated descriptors.

Code reads policy (the ``access`` option) and validation rules from here; nothing repeats them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2

from bhiv.options.v1 import annotations_pb2

__all__ = [
    "MethodPolicy",
    "all_services",
    "descriptor_set",
    "method_path",
    "policy_of",
    "services_of_package",
]


@cache
def all_services() -> tuple[ServiceDescriptor, ...]:
    """Imports every generated ``*_service_pb2`` module under ``bhiv`` and returns its services."""
    import bhiv

    found: list[ServiceDescriptor] = []
    # The generated packages have no __init__.py (namespace packages), which pkgutil does not walk.
    for root in map(Path, bhiv.__path__):
        for path in sorted(root.rglob("*_pb2.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = importlib.import_module(".".join(parts))
            found.extend(module.DESCRIPTOR.services_by_name.values())
    return tuple(sorted(found, key=lambda s: s.full_name))


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Every contract file with its dependencies (dependencies first), and the error details.

    ``google/rpc/error_details.proto`` is there although no contract imports it: the services put
    its messages (``ErrorInfo``, ``BadRequest``...) into a status's details, and whoever turns a
    status into JSON (Envoy's gRPC-JSON transcoder, ``buf curl``) must know their types.
    """
    files = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        file.CopyToProto(files.file.add())

    for service in all_services():
        add(service.file)
    add(error_details_pb2.DESCRIPTOR)
    return files


def services_of_package(package: str) -> tuple[ServiceDescriptor, ...]:
    """The services of one proto package, like ``bhiv.crm.v1``."""
    return tuple(s for s in all_services() if s.file.package == package)


def method_path(method: MethodDescriptor) -> str:
    """The HTTP/2 path of a method, ``/bhiv.crm.v1.CustomerService/GetCustomer``."""
    return f"/{method.containing_service.full_name}/{method.name}"


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """What the contract says a method requires.

    Attributes:
        public: True when no principal is needed.
        permission: The permission required otherwise (empty when public or undeclared).
        declared: False when the method has no ``access`` option — a contract bug.
        self_field: The request field that may name the caller itself (``name``); empty when the
            RPC has no self case.
        self_permission: The permission that suffices when ``self_field`` names the caller.
        mesh_only: True when only the mesh's services call it, directly: the edge refuses it.

    """

    public: bool
    permission: str
    declared: bool
    self_field: str = ""
    self_permission: str = ""
    mesh_only: bool = False


def policy_of(method: MethodDescriptor) -> MethodPolicy:
    """Reads the ``(bhiv.options.v1.access)`` option of a method."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.access):
        return MethodPolicy(public=False, permission="", declared=False)
    rule = options.Extensions[annotations_pb2.access]
    return MethodPolicy(
        public=rule.public,
        permission=rule.permission,
        declared=True,
        self_field=rule.self_field,
        self_permission=rule.self_permission,
        mesh_only=rule.mesh_only,
    )
