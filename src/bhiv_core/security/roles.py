"""The role → permission matrix: the one place that says what each of the five roles may do.

Permissions come from the contracts (every RPC's ``(bhiv.options.v1.access)``); a test checks that
this matrix names only permissions the contracts use and that admin holds all of them. Least
privilege: a role gets a permission only when its work needs it. Customers additionally see only
their own records, which each service enforces (another customer's record is NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ROLES",
    "ROLE_DESCRIPTIONS",
    "ROLE_PERMISSIONS",
    "STAFF_ROLES",
    "all_permissions",
    "role_allows",
]

_SELF = {"identity.self.read", "identity.self.write", "identity.roles.read"}
_ASSISTANT = {
    "orchestration.agents.read",
    "orchestration.agents.ask",
    "llm.models.read",
    "llm.completions.write",
    "llm.conversations.read",
    "llm.conversations.write",
    "llm.usage.read",
}

_OPS = {
    *_SELF,
    *_ASSISTANT,
    "identity.users.read",
    "logistics.inventory.read",
    "logistics.inventory.write",
    "logistics.inventory.delete",
    "logistics.suppliers.read",
    "logistics.suppliers.write",
    "logistics.suppliers.delete",
    "logistics.shipments.read",
    "logistics.shipments.create",
    "logistics.shipments.write",
    "logistics.analytics.read",
    "crm.customers.read",
    "orchestration.tasks.read",
    "orchestration.tasks.write",
    "orchestration.workflows.read",
    "orchestration.workflows.write",
    "orchestration.knowledge.read",
    "orchestration.knowledge.write",
    "integrations.integrations.read",
    "integrations.webhooks.read",
    "sentinel.audit.read",
    "sentinel.incidents.read",
    "sentinel.incidents.write",
    "sentinel.events.read",
    "sentinel.blocks.read",
    "sentinel.blocks.write",
    "sentinel.alerts.read",
}

_SALES = {
    *_SELF,
    *_ASSISTANT,
    "crm.customers.read",
    "crm.customers.write",
    "crm.leads.read",
    "crm.leads.write",
    "crm.leads.convert",
    "crm.interactions.read",
    "crm.interactions.write",
    "crm.tickets.read",
    "crm.dashboard.read",
    "logistics.inventory.read",
    "logistics.shipments.read",
    "orchestration.knowledge.read",
    "integrations.content.generate",
}

_SUPPORT = {
    *_SELF,
    *_ASSISTANT,
    "crm.customers.read",
    "crm.customers.write",
    "crm.tickets.create",
    "crm.tickets.read",
    "crm.tickets.write",
    "crm.interactions.read",
    "crm.interactions.write",
    "logistics.shipments.read",
    "orchestration.knowledge.read",
}

_CUSTOMER = {
    *_SELF,
    *_ASSISTANT,
    # Each of these is limited to the customer's own records by the owning service.
    "identity.users.read",
    "crm.customers.read",
    "crm.tickets.create",
    "crm.tickets.read",
    # Creating a shipment for itself only (logistics checks the customer); advancing and
    # cancelling (logistics.shipments.write) stay with staff.
    "logistics.shipments.create",
    "logistics.shipments.read",
}


def all_permissions() -> frozenset[str]:
    """Every permission the contracts declare (read from the descriptors)."""
    from bhiv_core.runtime.contracts import all_services, policy_of

    policies = [policy_of(m) for s in all_services() for m in s.methods]
    return frozenset(
        permission
        for policy in policies
        for permission in (policy.permission, policy.self_permission)
        if permission
    )


ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    # Admin holds every permission the contracts declare, so a new RPC is administrable at once.
    "admin": all_permissions(),
    "ops": frozenset(_OPS),
    "sales": frozenset(_SALES),
    "support": frozenset(_SUPPORT),
    "customer": frozenset(_CUSTOMER),
}

ROLES: tuple[str, ...] = tuple(ROLE_PERMISSIONS)

STAFF_ROLES: frozenset[str] = frozenset({"admin", "ops", "sales", "support"})
"""The roles of the people who run the platform; customers (and unknown roles) are outside them.

A refusal tells staff which permission their role lacks, so they can ask for it; anyone else learns
only that the call is not theirs to make.
"""

ROLE_DESCRIPTIONS: Mapping[str, str] = {
    "admin": "Administers users, keys, security and every module.",
    "ops": "Runs logistics, tasks and workflows; watches and blocks threats.",
    "sales": "Works customers, leads, interactions and the sales dashboard.",
    "support": "Works support tickets and customer records.",
    "customer": "An end customer: its own profile, tickets and shipments, and the assistants.",
}


def role_allows(role: str, permission: str) -> bool:
    """True when ``role`` holds ``permission``."""
    granted = ROLE_PERMISSIONS.get(role)
    return granted is not None and permission in granted
