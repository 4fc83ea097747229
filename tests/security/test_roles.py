from __future__ import annotations

from bhiv_core.security.roles import ROLE_DESCRIPTIONS, ROLE_PERMISSIONS, all_permissions, role_allows


def test_five_roles_each_described() -> None:
    assert set(ROLE_PERMISSIONS) == {"admin", "ops", "sales", "support", "customer"}
    assert set(ROLE_DESCRIPTIONS) == set(ROLE_PERMISSIONS)


def test_matrix_names_only_permissions_the_contracts_declare() -> None:
    declared = all_permissions()
    for role, permissions in ROLE_PERMISSIONS.items():
        assert permissions <= declared, f"{role}: {sorted(permissions - declared)}"


def test_admin_holds_every_permission() -> None:
    assert ROLE_PERMISSIONS["admin"] == all_permissions()


def test_least_privilege_spot_checks() -> None:
    assert not role_allows("customer", "identity.users.write")
    assert not role_allows("customer", "sentinel.audit.read")
    assert not role_allows("sales", "logistics.inventory.write")
    assert not role_allows("support", "crm.leads.convert")
    assert not role_allows("ops", "identity.keys.write")
    assert role_allows("support", "crm.tickets.write")
    assert not role_allows("nobody", "identity.self.read")
    # Only admin (and identity's own service token) may write security events.
    assert [r for r in ROLE_PERMISSIONS if role_allows(r, "sentinel.events.write")] == ["admin"]
