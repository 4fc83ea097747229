"""``make demo``: loads a small, clearly labelled SAMPLE dataset into a running mesh.

Everything goes through the public API at the edge, as any client would do it, with the admin
credentials ``make run`` wrote to ``<data_dir>/admin-credentials``. Every record is marked as
sample data (the tag ``sample``, ``(sample)`` in names, ``example.com`` addresses), and the
demo's users — one per role, the customer one linked to a sample customer — get generated
passwords written to ``<data_dir>/demo-credentials`` (mode 0600), so the README's examples can be
tried with each role's token. A second run finds the sample customers and changes nothing.

Usage: ``make demo`` (``BHIV_EDGE=host:port`` and ``BHIV_DATA_DIR`` override the defaults).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import grpc
from google.protobuf.field_mask_pb2 import FieldMask

from bhiv.crm.v1 import (
    customer_pb2,
    customer_service_pb2,
    customer_service_pb2_grpc,
    interaction_pb2,
    interaction_service_pb2,
    interaction_service_pb2_grpc,
    lead_pb2,
    lead_service_pb2,
    lead_service_pb2_grpc,
    ticket_pb2,
    ticket_service_pb2,
    ticket_service_pb2_grpc,
)
from bhiv.crm.v1 import money_pb2 as crm_money
from bhiv.identity.v1 import (
    auth_service_pb2,
    auth_service_pb2_grpc,
    user_pb2,
    user_service_pb2,
    user_service_pb2_grpc,
)
from bhiv.logistics.v1 import (
    address_pb2,
    inventory_item_pb2,
    inventory_service_pb2,
    inventory_service_pb2_grpc,
    shipment_pb2,
    shipment_service_pb2,
    shipment_service_pb2_grpc,
    supplier_pb2,
    supplier_service_pb2,
    supplier_service_pb2_grpc,
)
from bhiv.logistics.v1 import money_pb2 as logistics_money

TIMEOUT = 15.0
SAMPLE = "sample"
NOTE = "Sample data loaded by `make demo`; not a real person or company."

Metadata = tuple[tuple[str, str], ...]

SUPPLIERS = [
    ("Ganga Organics (sample)", "orders@ganga-organics.example.com"),
    ("Deccan Paper Works (sample)", "sales@deccan-paper.example.com"),
]
# sku, display name, category, quantity, reorder level, price in INR, supplier index
ITEMS = [
    ("SAMPLE-TULSI-100", "Tulsi tea, 100 g (sample)", "wellness", 120, 20, 249, 0),
    ("SAMPLE-GHEE-500", "Cow ghee, 500 ml (sample)", "food", 40, 10, 649, 0),
    ("SAMPLE-ASHWA-60", "Ashwagandha capsules, 60 (sample)", "wellness", 8, 15, 399, 0),
    ("SAMPLE-GITA-HB", "Bhagavad Gita, hardback (sample)", "books", 60, 10, 499, 1),
    ("SAMPLE-NOTE-A5", "Study notebook A5 (sample)", "stationery", 300, 50, 99, 1),
    ("SAMPLE-MAT-6MM", "Yoga mat, 6 mm (sample)", "yoga", 25, 5, 1299, 0),
]
# first, last, e-mail local part, company, status, city
CUSTOMERS = [
    (
        "Aarav",
        "Sharma",
        "aarav.sharma",
        "Sharma Traders (sample)",
        customer_pb2.CUSTOMER_STATUS_ACTIVE,
        "Pune",
    ),
    ("Meera", "Iyer", "meera.iyer", "", customer_pb2.CUSTOMER_STATUS_ACTIVE, "Chennai"),
    (
        "Seán",
        "O'Brien",
        "sean.obrien",
        "TechStart Inc (sample)",
        customer_pb2.CUSTOMER_STATUS_PROSPECT,
        "Dublin",
    ),
    ("प्रिया", "वर्मा", "priya.verma", "", customer_pb2.CUSTOMER_STATUS_INACTIVE, "Jaipur"),
    (
        "Kabir",
        "Das",
        "kabir.das",
        "Das Yoga Studio (sample)",
        customer_pb2.CUSTOMER_STATUS_ACTIVE,
        "Varanasi",
    ),
]
# first, last, e-mail local part, company, value in INR, stages to walk, convert
LEADS = [
    (
        "Rohan",
        "Mehta",
        "rohan.mehta",
        "Mehta Wellness (sample)",
        250_000,
        ["QUALIFIED", "PROPOSAL", "NEGOTIATION"],
        True,
    ),
    ("Ananya", "Rao", "ananya.rao", "Rao Learning (sample)", 120_000, ["QUALIFIED", "PROPOSAL"], False),
    ("Vikram", "Singh", "vikram.singh", "Singh Exports (sample)", 80_000, ["QUALIFIED"], False),
    ("Lena", "Fischer", "lena.fischer", "Fischer GmbH (sample)", 40_000, ["LOST"], False),
]


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _credentials(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _inr(rupees: int) -> tuple[str, int]:
    return "INR", rupees * 1_000_000


async def _login(channel: grpc.aio.Channel, username: str, password: str) -> Metadata:
    reply = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
        auth_service_pb2.LoginRequest(username=username, password=password), timeout=TIMEOUT
    )
    return _bearer(reply.tokens.access_token)


async def load(target: str, data_dir: Path) -> None:
    """Loads the sample dataset through the edge at ``target``."""
    admin_file = data_dir / "admin-credentials"
    if not admin_file.exists():
        sys.exit(f"{admin_file} is missing: start the mesh with `make run` first (same data directory)")
    admin_values = _credentials(admin_file)
    async with grpc.aio.insecure_channel(target) as channel:
        admin = await _login(channel, admin_values["username"], admin_values["password"])
        customers = customer_service_pb2_grpc.CustomerServiceStub(channel)
        existing = await customers.ListCustomers(
            customer_service_pb2.ListCustomersRequest(tag=SAMPLE, page_size=1),
            metadata=admin,
            timeout=TIMEOUT,
        )
        if existing.customers:
            print(
                f"The sample data is already loaded (see {data_dir / 'demo-credentials'}); nothing changed."
            )
            return

        print("Suppliers and inventory (logistics)...")
        suppliers = supplier_service_pb2_grpc.SupplierServiceStub(channel)
        supplier_names = []
        for display_name, email in SUPPLIERS:
            made = await suppliers.CreateSupplier(
                supplier_service_pb2.CreateSupplierRequest(
                    supplier=supplier_pb2.Supplier(
                        display_name=display_name, contact_email=email, rating=4, active=True
                    ),
                    request_id=f"demo-supplier-{email}",
                ),
                metadata=admin,
                timeout=TIMEOUT,
            )
            supplier_names.append(made.supplier.name)
        inventory = inventory_service_pb2_grpc.InventoryServiceStub(channel)
        item_names = []
        for sku, name, category, quantity, reorder, rupees, supplier in ITEMS:
            currency, micros = _inr(rupees)
            item = inventory_item_pb2.InventoryItem(
                sku=sku,
                display_name=name,
                description=NOTE,
                category=category,
                quantity=quantity,
                reorder_level=reorder,
                unit_price=logistics_money.Money(currency_code=currency, amount_micros=micros),
                supplier=supplier_names[supplier],
                warehouse_location="Pune WH-1 (sample)",
            )
            made_item = await inventory.CreateItem(
                inventory_service_pb2.CreateItemRequest(item=item, request_id=f"demo-item-{sku}"),
                metadata=admin,
                timeout=TIMEOUT,
            )
            item_names.append(made_item.item.name)

        print("Customers, interactions, leads and tickets (CRM)...")
        customer_names = []
        for first, last, local, company, status, city in CUSTOMERS:
            customer = customer_pb2.Customer(
                first_name=first,
                last_name=last,
                email=f"{local}@example.com",
                company=company,
                status=status,
                tags=[SAMPLE],
                notes=NOTE,
            )
            customer.address.city = city
            customer.address.country_code = "IE" if city == "Dublin" else "IN"
            made_customer = await customers.CreateCustomer(
                customer_service_pb2.CreateCustomerRequest(
                    customer=customer, request_id=f"demo-customer-{local}"
                ),
                metadata=admin,
                timeout=TIMEOUT,
            )
            customer_names.append(made_customer.customer.name)
        interactions = interaction_service_pb2_grpc.InteractionServiceStub(channel)
        for customer_name, kind, subject in [
            (customer_names[0], interaction_pb2.INTERACTION_TYPE_CALL, "Quarterly order review (sample)"),
            (customer_names[2], interaction_pb2.INTERACTION_TYPE_EMAIL, "Pricing question (sample)"),
            (customer_names[4], interaction_pb2.INTERACTION_TYPE_MEETING, "Studio visit (sample)"),
        ]:
            interaction = interaction_pb2.Interaction(
                customer=customer_name, type=kind, subject=subject, notes=NOTE
            )
            await interactions.CreateInteraction(
                interaction_service_pb2.CreateInteractionRequest(interaction=interaction),
                metadata=admin,
                timeout=TIMEOUT,
            )
        leads = lead_service_pb2_grpc.LeadServiceStub(channel)
        for first, last, local, company, rupees, stages, convert in LEADS:
            currency, micros = _inr(rupees)
            lead = lead_pb2.Lead(
                first_name=first,
                last_name=last,
                email=f"{local}@example.com",
                company=company,
                source=lead_pb2.LEAD_SOURCE_WEBSITE,
                estimated_value=crm_money.Money(currency_code=currency, amount_micros=micros),
                probability=40,
                notes=NOTE,
            )
            made_lead = (
                await leads.CreateLead(
                    lead_service_pb2.CreateLeadRequest(lead=lead, request_id=f"demo-lead-{local}"),
                    metadata=admin,
                    timeout=TIMEOUT,
                )
            ).lead
            for stage in stages:
                change = lead_pb2.Lead(
                    name=made_lead.name, status=lead_pb2.LeadStatus.Value(f"LEAD_STATUS_{stage}")
                )
                made_lead = (
                    await leads.UpdateLead(
                        lead_service_pb2.UpdateLeadRequest(
                            lead=change, update_mask=FieldMask(paths=["status"])
                        ),
                        metadata=admin,
                        timeout=TIMEOUT,
                    )
                ).lead
            if convert:
                converted = await leads.ConvertLead(
                    lead_service_pb2.ConvertLeadRequest(
                        name=made_lead.name, request_id=f"demo-convert-{local}"
                    ),
                    metadata=admin,
                    timeout=TIMEOUT,
                )
                # The customer a lead becomes is sample data too.
                tagged = customer_pb2.Customer(name=converted.customer.name, tags=[SAMPLE])
                await customers.UpdateCustomer(
                    customer_service_pb2.UpdateCustomerRequest(
                        customer=tagged, update_mask=FieldMask(paths=["tags"])
                    ),
                    metadata=admin,
                    timeout=TIMEOUT,
                )

        print("Users, one per role (identity)...")
        users = user_service_pb2_grpc.UserServiceStub(channel)
        lines = [f"# {NOTE}", "# username=password, one per role; log in with AuthService.Login."]
        user_names = {}
        for role in ("sales", "ops", "support", "customer"):
            username = f"demo-{role}"
            password = secrets.token_urlsafe(18)
            user = user_pb2.User(
                username=username,
                display_name=f"Demo {role} (sample)",
                role=user_pb2.Role.Value(f"ROLE_{role.upper()}"),
                customer=customer_names[0] if role == "customer" else "",
            )
            try:
                made_user = await users.CreateUser(
                    user_service_pb2.CreateUserRequest(user=user, password=password),
                    metadata=admin,
                    timeout=TIMEOUT,
                )
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                print(f"  {username} exists already: its password is unchanged")
                continue
            user_names[role] = made_user.user.name
            lines.append(f"{username}={password}")
        _write_private(data_dir / "demo-credentials", "\n".join(lines) + "\n")

        tickets = ticket_service_pb2_grpc.TicketServiceStub(channel)
        for customer_name, title, priority, finish in [
            (customer_names[0], "Parcel arrived damaged (sample)", ticket_pb2.TICKET_PRIORITY_HIGH, False),
            (customer_names[1], "Change delivery address (sample)", ticket_pb2.TICKET_PRIORITY_MEDIUM, True),
            (customer_names[4], "Invoice copy needed (sample)", ticket_pb2.TICKET_PRIORITY_LOW, False),
        ]:
            ticket = ticket_pb2.Ticket(
                customer=customer_name, title=title, description=NOTE, priority=priority
            )
            made_ticket = (
                await tickets.CreateTicket(
                    ticket_service_pb2.CreateTicketRequest(ticket=ticket), metadata=admin, timeout=TIMEOUT
                )
            ).ticket
            if "support" in user_names:
                made_ticket = (
                    await tickets.AssignTicket(
                        ticket_service_pb2.AssignTicketRequest(
                            name=made_ticket.name, assignee=user_names["support"]
                        ),
                        metadata=admin,
                        timeout=TIMEOUT,
                    )
                ).ticket
            if finish:
                await tickets.ResolveTicket(
                    ticket_service_pb2.ResolveTicketRequest(
                        name=made_ticket.name, resolution="Address updated before dispatch (sample)."
                    ),
                    metadata=admin,
                    timeout=TIMEOUT,
                )

        print("Shipments with their tracking history (logistics)...")
        shipments = shipment_service_pb2_grpc.ShipmentServiceStub(channel)
        journeys = [
            (0, [(0, 2), (3, 1)], ["PROCESSING", "SHIPPED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED"]),
            (1, [(1, 1)], ["PROCESSING", "SHIPPED", "IN_TRANSIT"]),
            (4, [(5, 1), (4, 5)], []),
        ]
        places = {
            "PROCESSING": "Pune WH-1",
            "SHIPPED": "Pune WH-1",
            "IN_TRANSIT": "Mumbai hub",
            "OUT_FOR_DELIVERY": "Local depot",
            "DELIVERED": "Customer address",
        }
        for customer_index, lines_wanted, steps in journeys:
            first, last, _, _, _, city = CUSTOMERS[customer_index]
            address = address_pb2.Address(
                recipient=f"{first} {last}", line1="12 Sample Street", city=city, country_code="IN"
            )
            shipment = shipment_pb2.Shipment(
                customer=customer_names[customer_index],
                line_items=[shipment_pb2.LineItem(item=item_names[i], quantity=q) for i, q in lines_wanted],
                shipping_address=address,
                carrier="Sample Express",
            )
            made_shipment = (
                await shipments.CreateShipment(
                    shipment_service_pb2.CreateShipmentRequest(shipment=shipment),
                    metadata=admin,
                    timeout=TIMEOUT,
                )
            ).shipment
            for step in steps:
                await shipments.AdvanceShipment(
                    shipment_service_pb2.AdvanceShipmentRequest(
                        name=made_shipment.name,
                        status=shipment_pb2.ShipmentStatus.Value(f"SHIPMENT_STATUS_{step}"),
                        location=f"{places[step]} (sample)",
                        description=f"{step.replace('_', ' ').lower()} (sample)",
                    ),
                    metadata=admin,
                    timeout=TIMEOUT,
                )
            print(f"  {made_shipment.name}: tracking number {made_shipment.tracking_number}")

    print(
        f"Loaded: {len(SUPPLIERS)} suppliers, {len(ITEMS)} items, {len(CUSTOMERS)} customers, "
        f"{len(LEADS)} leads, 3 tickets, 3 interactions, {len(journeys)} shipments; "
        f"demo users in {data_dir / 'demo-credentials'}."
    )


def main() -> None:
    """Loads the dataset into the mesh at ``BHIV_EDGE`` (default ``127.0.0.1:8080``)."""
    target = os.environ.get("BHIV_EDGE", "127.0.0.1:8080")
    data_dir = Path(os.environ.get("BHIV_DATA_DIR", ".data"))
    try:
        asyncio.run(load(target, data_dir))
    except grpc.aio.AioRpcError as err:
        sys.exit(f"make demo: {err.code().name}: {err.details()} (is `make run` going at {target}?)")


if __name__ == "__main__":
    main()
