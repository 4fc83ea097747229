"""Imports only go down: every module of ``bhiv_core`` imports from its own layer or a lower one.

The layers, highest first (STYLE.md 12):

1. the launcher: ``mesh`` and the ``edge`` it starts;
2. ``services``;
3. the chain wiring: ``standard_chain`` composes the concerns with their collaborators;
4. the concerns and stores: ``interceptors``, ``audit``, ``storage``, ``resources`` (the
   resource kit every resource-oriented service builds on), ``agents`` (threat detection and
   response, which sentinel runs in process; the orchestrator's agents), ``knowledge``,
   ``media`` (the image and audio agents' engines), ``text`` (the libraries the agents build
   on), ``events`` (the transactional outbox and its relay) and ``outbound`` (the SSRF-safe HTTP
   client and the webhook signature);
5. ``runtime``: config, the chain mechanism, the server, clients, telemetry — it runs whatever
   chain it is given and knows no concern;
6. ``security``: principals, roles, token verification;
7. the base: ``registry``, and the two runtime modules everything (security too) builds on and
   which import nothing of ours: ``runtime.errors`` (the typed errors) and ``runtime.contracts``
   (reading the contracts' descriptors and options).

Every import counts: module level, inside functions, under ``TYPE_CHECKING``, relative or absolute.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bhiv_core

SRC = Path(bhiv_core.__file__).parent

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("launcher", ("bhiv_core.mesh", "bhiv_core.edge")),
    ("services", ("bhiv_core.services",)),
    ("chain wiring", ("bhiv_core.standard_chain",)),
    (
        "concerns and stores",
        (
            "bhiv_core.interceptors",
            "bhiv_core.audit",
            "bhiv_core.storage",
            "bhiv_core.resources",
            "bhiv_core.agents",
            "bhiv_core.knowledge",
            "bhiv_core.media",
            "bhiv_core.text",
            "bhiv_core.events",
            "bhiv_core.outbound",
        ),
    ),
    ("runtime", ("bhiv_core.runtime",)),
    ("security", ("bhiv_core.security",)),
    ("base", ("bhiv_core.registry", "bhiv_core.runtime.errors", "bhiv_core.runtime.contracts")),
)
"""Highest first; a module belongs to the layer of its longest matching prefix."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (SRC.parent / relative).with_suffix(".py").is_file() or (
        SRC.parent / relative / "__init__.py"
    ).is_file()


def _layer(module: str) -> int | None:
    """The index of ``module``'s layer in :data:`LAYERS` (0 is the highest), None when unplaced."""
    if module == "bhiv_core":
        # Importing any module runs the root package first, so it sits at the base.
        return len(LAYERS) - 1
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _imports(source: str, module: str, *, package: bool = False) -> list[tuple[int, str]]:
    """Every ``bhiv_core`` module that ``source`` (the text of ``module``) imports, with its line."""
    parent = module if package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parent.split(".")[: len(parent.split(".")) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                # `from bhiv_core.runtime import telemetry` imports the submodule, not the package.
                submodule = f"{origin}.{alias.name}"
                found.append((node.lineno, submodule if _is_module(submodule) else origin))
    ours = [(line, name) for line, name in found if name == "bhiv_core" or name.startswith("bhiv_core.")]
    return sorted(set(ours))


def _imports_of(path: Path) -> list[tuple[int, str]]:
    return _imports(path.read_text(), _module_name(path), package=path.name == "__init__.py")


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [_module_name(p) for p in _modules() if _layer(_module_name(p)) is None]
    assert unplaced == [], f"place these modules in a layer of tests/test_layers.py: {unplaced}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward: list[str] = []
    for path in _modules():
        module = _module_name(path)
        own = _layer(module)
        for line, imported in _imports_of(path):
            target = _layer(imported)
            if own is not None and target is not None and target < own:
                upward.append(
                    f"{path.relative_to(SRC.parent)}:{line}: {module} ({LAYERS[own][0]}) imports "
                    f"{imported} ({LAYERS[target][0]})"
                )
    assert upward == [], "imports must only go down:\n" + "\n".join(upward)


def test_the_layer_check_sees_function_local_and_relative_imports() -> None:
    # The runtime's server once imported the standard chain inside a function: such imports count.
    source = (
        "def chain():\n    from bhiv_core.standard_chain import standard_chain\n"
        "from bhiv_core.runtime import server\nfrom . import chain\nimport grpc\n"
    )
    seen = [name for _, name in _imports(source, "bhiv_core.runtime.probe")]
    assert seen == ["bhiv_core.standard_chain", "bhiv_core.runtime.server", "bhiv_core.runtime.chain"]
