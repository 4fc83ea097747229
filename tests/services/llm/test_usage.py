"""Usage metering per principal and monthly budgets, against the fake Groq (real SDK)."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.rpc import error_details_pb2

from bhiv.llm.v1 import completion_pb2, model_pb2
from bhiv.llm.v1 import usage_service_pb2 as us
from tests.services.crm.conftest import reason, refused, status_of, violations
from tests.services.llm.conftest import ADMIN, CUSTOMER, FakeGroq, Llm, serve_llm
from tests.services.llm.test_groq import chat

ADMIN_PRINCIPAL = "principals/users:admin"
CUSTOMER_PRINCIPAL = "principals/users:cus-1"


async def test_every_completion_is_metered_for_its_principal(keyed: Llm) -> None:
    await keyed.completions.Complete(chat(), metadata=ADMIN)
    _ = [e async for e in keyed.completions.StreamComplete(chat(), metadata=ADMIN)]
    usage = (await keyed.usage.GetUsage(us.GetUsageRequest(), metadata=ADMIN)).usage
    assert usage.principal == ADMIN_PRINCIPAL
    assert usage.request_count == 2
    assert (usage.input_tokens, usage.output_tokens) == (1_000_000 + 11, 500_000 + 3)
    assert usage.cost_micros == 90_000  # the stream's 14 tokens cost less than a micro-dollar
    assert usage.budget_micros == 5_000_000
    assert usage.remaining_micros == 5_000_000 - 90_000
    # Another principal's ledger is its own.
    other = (await keyed.usage.GetUsage(us.GetUsageRequest(), metadata=CUSTOMER)).usage
    assert (other.principal, other.request_count, other.cost_micros) == (CUSTOMER_PRINCIPAL, 0, 0)


async def test_a_spent_budget_falls_back_to_the_free_responder(keyed: Llm, fake_groq: FakeGroq) -> None:
    await keyed.usage.SetBudget(
        us.SetBudgetRequest(principal=ADMIN_PRINCIPAL, monthly_budget_micros=100_000), metadata=ADMIN
    )
    for _ in range(2):  # 90,000 each: the second starts with 10,000 left
        reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
        assert reply.provider == model_pb2.PROVIDER_GROQ
    reply = (await keyed.completions.Complete(chat(), metadata=ADMIN)).completion
    assert reply.fallback
    assert reply.fallback_reason == completion_pb2.FALLBACK_REASON_BUDGET_EXHAUSTED
    assert reply.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE
    assert len(fake_groq.requests) == 2
    usage = (await keyed.usage.GetUsage(us.GetUsageRequest(), metadata=ADMIN)).usage
    assert (usage.request_count, usage.cost_micros, usage.remaining_micros) == (3, 180_000, 0)


async def test_without_fallback_a_spent_budget_is_resource_exhausted_with_a_quota_failure(
    tmp_path: Path, fake_groq: FakeGroq
) -> None:
    async with serve_llm(tmp_path, groq=fake_groq, LLM_FALLBACK="off", LLM_DEFAULT_BUDGET_MICROS="0") as llm:
        err = await refused(llm.completions.Complete(chat(), metadata=ADMIN))
        # The free model is still served.
        free = await llm.completions.Complete(chat(model="models/local-extractive"), metadata=ADMIN)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(err) == "BUDGET_EXHAUSTED"
    quota = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota) for d in status_of(err).details)
    assert [v.subject for v in quota.violations] == [ADMIN_PRINCIPAL]
    assert fake_groq.requests == []
    assert free.completion.provider == model_pb2.PROVIDER_LOCAL_EXTRACTIVE


async def test_set_budget_with_a_stale_etag_is_aborted(offline: Llm) -> None:
    first = await offline.usage.SetBudget(
        us.SetBudgetRequest(principal=CUSTOMER_PRINCIPAL, monthly_budget_micros=1), metadata=ADMIN
    )
    second = await offline.usage.SetBudget(
        us.SetBudgetRequest(principal=CUSTOMER_PRINCIPAL, monthly_budget_micros=2, etag=first.budget.etag),
        metadata=ADMIN,
    )
    assert second.budget.monthly_budget_micros == 2 and second.budget.etag != first.budget.etag
    err = await refused(
        offline.usage.SetBudget(
            us.SetBudgetRequest(
                principal=CUSTOMER_PRINCIPAL, monthly_budget_micros=3, etag=first.budget.etag
            ),
            metadata=ADMIN,
        )
    )
    assert err.code() == grpc.StatusCode.ABORTED
    usage = (await offline.usage.GetUsage(us.GetUsageRequest(), metadata=CUSTOMER)).usage
    assert usage.budget_micros == 2


async def test_reading_another_principals_usage_needs_budget_rights(offline: Llm) -> None:
    err = await refused(
        offline.usage.GetUsage(us.GetUsageRequest(principal=ADMIN_PRINCIPAL), metadata=CUSTOMER)
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    theirs = await offline.usage.GetUsage(us.GetUsageRequest(principal=CUSTOMER_PRINCIPAL), metadata=ADMIN)
    assert theirs.usage.principal == CUSTOMER_PRINCIPAL


async def test_a_customer_cannot_set_budgets(offline: Llm) -> None:
    request = us.SetBudgetRequest(principal=CUSTOMER_PRINCIPAL, monthly_budget_micros=10**9)
    err = await refused(offline.usage.SetBudget(request, metadata=CUSTOMER))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_window_that_ends_before_it_starts_is_invalid_argument(offline: Llm) -> None:
    request = us.GetUsageRequest()
    request.start_time.FromSeconds(2000)
    request.end_time.FromSeconds(1000)
    err = await refused(offline.usage.GetUsage(request, metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("end_time", "END_BEFORE_START") in violations(err)


async def test_hostile_usage_requests_are_invalid_argument(offline: Llm) -> None:
    bad = [
        (
            offline.usage.GetUsage(us.GetUsageRequest(principal="principals/a/../b"), metadata=ADMIN),
            "principal",
        ),
        (offline.usage.SetBudget(us.SetBudgetRequest(monthly_budget_micros=1), metadata=ADMIN), "principal"),
        (
            offline.usage.SetBudget(
                us.SetBudgetRequest(principal=ADMIN_PRINCIPAL, monthly_budget_micros=-1), metadata=ADMIN
            ),
            "monthly_budget_micros",
        ),
        (
            offline.usage.SetBudget(
                us.SetBudgetRequest(principal=ADMIN_PRINCIPAL, etag="x" * 200), metadata=ADMIN
            ),
            "etag",
        ),
    ]
    for call, field in bad:
        err = await refused(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in [f for f, _ in violations(err)]
