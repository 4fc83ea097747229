"""The behavioural detectors: what each must flag, what it must not, and that memory stays bounded.

Time is passed in explicitly (the detectors take ``now``), so every window is exact and no test
waits.
"""

from __future__ import annotations

from bhiv_core.agents.threat_detection.detection import Category, Detection, Severity
from bhiv_core.agents.threat_detection.detectors import (
    BruteForceDetector,
    CredentialStuffingDetector,
    Detector,
    FloodDetector,
    ScanningDetector,
    TokenAbuseDetector,
)
from bhiv_core.agents.threat_detection.observations import Observation, ObservationKind
from bhiv_core.agents.threat_detection.windows import BoundedMap, DistinctWindow, EventWindow

LOGIN = "/bhiv.identity.v1.AuthService/Login"
K = ObservationKind


def feed(detector: Detector, observations: list[tuple[float, Observation]]) -> list[Detection]:
    return [d for now, obs in observations for d in detector.observe(obs, now)]


def failed(address: str, user: str) -> Observation:
    return Observation(K.LOGIN_FAILED, address, user, LOGIN, detail="wrong password")


# --- brute force -----------------------------------------------------------------------------------


def test_ten_failed_logins_from_one_address_in_five_minutes_are_brute_force() -> None:
    found = feed(BruteForceDetector(), [(i * 20.0, failed("203.0.113.7", "admin")) for i in range(10)])
    rules = [d.rule_id for d in found]
    assert rules == ["bruteforce.address", "bruteforce.account"]
    assert found[0].category is Category.BRUTE_FORCE and found[0].severity is Severity.HIGH
    assert found[0].source_address == "203.0.113.7"
    assert "10 failed logins from 203.0.113.7" in found[0].evidence


def test_failures_spread_beyond_the_window_are_not_brute_force() -> None:
    # 10 failures, one every 40 s: never 10 within 300 s.
    assert feed(BruteForceDetector(), [(i * 40.0, failed("203.0.113.7", f"u{i}")) for i in range(10)]) == []


def test_nine_failures_then_a_success_is_a_user_who_mistyped() -> None:
    detector = BruteForceDetector()
    events = [(float(i), failed("198.51.100.4", "priya")) for i in range(9)]
    events.append((10.0, Observation(K.LOGIN_SUCCEEDED, "198.51.100.4", "priya", LOGIN)))
    assert feed(detector, events) == []
    # The success reset the account: nine more failures are still below the threshold for it.
    assert [
        d.rule_id for d in feed(detector, [(20.0 + i, failed("198.51.100.5", "priya")) for i in range(9)])
    ] == []


def test_spraying_one_account_from_many_addresses_is_brute_force_on_the_account() -> None:
    found = feed(BruteForceDetector(), [(float(i), failed(f"203.0.113.{i}", "Admin")) for i in range(10)])
    assert [(d.rule_id, d.principal) for d in found] == [("bruteforce.account", "Admin")]


def test_a_success_after_the_threshold_of_failures_is_critical() -> None:
    events = [(float(i), failed("203.0.113.7", "admin")) for i in range(10)]
    events.append((11.0, Observation(K.LOGIN_SUCCEEDED, "203.0.113.7", "admin", LOGIN)))
    found = feed(BruteForceDetector(), events)
    assert found[-1].rule_id == "bruteforce.success_after_failures"
    assert found[-1].severity is Severity.CRITICAL


def test_brute_force_fires_once_per_window_not_once_per_attempt() -> None:
    found = feed(BruteForceDetector(), [(i * 1.0, failed("203.0.113.7", f"u{i}")) for i in range(100)])
    assert [d.rule_id for d in found] == ["bruteforce.address"]
    again = feed(BruteForceDetector(), [(i * 10.0, failed("203.0.113.7", f"u{i}")) for i in range(100)])
    # 1000 s of attack: once at the 10th failure, then once per 300 s.
    assert [d.time for d in again] == [90.0, 390.0, 690.0, 990.0]


# --- credential stuffing ---------------------------------------------------------------------------


def test_failed_logins_for_six_accounts_from_one_address_are_credential_stuffing() -> None:
    found = feed(
        CredentialStuffingDetector(), [(i * 5.0, failed("203.0.113.9", f"user{i}")) for i in range(6)]
    )
    assert [d.rule_id for d in found] == ["stuffing.address"]
    assert "6 distinct accounts" in found[0].evidence


def test_one_user_retrying_their_own_account_is_not_credential_stuffing() -> None:
    events = [(i * 5.0, failed("203.0.113.9", "Priya" if i % 2 else "priya")) for i in range(30)]
    assert feed(CredentialStuffingDetector(), events) == []


def test_a_few_colleagues_behind_one_nat_are_not_credential_stuffing() -> None:
    events = [
        (i * 30.0, failed("192.0.2.1", name))
        for i, name in enumerate(["asha", "ravi", "meera", "john", "li"] * 2)
    ]
    assert feed(CredentialStuffingDetector(), events) == []


# --- floods ----------------------------------------------------------------------------------------


def call(
    address: str, status: str = "OK", method: str = "/bhiv.crm.v1.CustomerService/ListCustomers"
) -> Observation:
    return Observation(K.CALL, address, method=method, status=status)


def steady(
    detector: FloodDetector, address: str, per_bucket: int, buckets: int, start: float = 0.0
) -> list[Detection]:
    found: list[Detection] = []
    for b in range(buckets):
        for i in range(per_bucket):
            found += detector.observe(call(address), start + b * 10.0 + i * (10.0 / per_bucket))
    return found


def test_a_burst_far_above_the_address_baseline_is_a_flood() -> None:
    detector = FloodDetector()
    assert steady(detector, "203.0.113.7", per_bucket=30, buckets=30) == []  # baseline ~30/10 s
    found = steady(detector, "203.0.113.7", per_bucket=400, buckets=1, start=300.0)
    assert [d.rule_id for d in found] == ["flood.address"]
    assert found[0].category is Category.FLOOD
    assert "300 calls" in found[0].evidence  # 10 x the learnt baseline of 30


def test_a_busy_client_above_the_floor_but_near_its_own_baseline_is_not_a_flood() -> None:
    detector = FloodDetector(floor=200)
    assert steady(detector, "198.51.100.20", per_bucket=150, buckets=30) == []
    # 400 calls in 10 s is twice the floor, but under 10 x this client's learnt 150.
    assert steady(detector, "198.51.100.20", per_bucket=400, buckets=3, start=300.0) == []


def test_a_new_address_is_judged_by_the_floor_and_the_population_baseline() -> None:
    detector = FloodDetector(floor=200)
    assert steady(detector, "198.51.100.1", per_bucket=50, buckets=20) == []
    assert 450 < detector.threshold("203.0.113.99") <= 500  # 10 x the population's ~50
    found = steady(detector, "203.0.113.99", per_bucket=600, buckets=1, start=200.0)
    assert [d.source_address for d in found] == ["203.0.113.99"]


def test_a_flood_does_not_raise_its_own_baseline() -> None:
    detector = FloodDetector(floor=100, cooldown_seconds=0.0)
    steady(detector, "203.0.113.7", per_bucket=10, buckets=10)
    found = steady(detector, "203.0.113.7", per_bucket=500, buckets=20, start=100.0)
    assert len(found) == 20  # every bucket of the sustained flood is still one


def test_security_events_do_not_count_as_traffic() -> None:
    detector = FloodDetector(floor=5)
    assert feed(detector, [(0.0, failed("203.0.113.7", "x"))] * 50) == []


# --- scanning --------------------------------------------------------------------------------------

METHODS = [f"/bhiv.crm.v1.CustomerService/M{i}" for i in range(5)]


def test_a_burst_of_not_found_and_unimplemented_over_several_methods_is_scanning() -> None:
    events = [
        (
            i * 1.0,
            call("203.0.113.50", ["NOT_FOUND", "UNIMPLEMENTED", "PERMISSION_DENIED"][i % 3], METHODS[i % 5]),
        )
        for i in range(20)
    ]
    found = feed(ScanningDetector(), events)
    assert [d.rule_id for d in found] == ["scanning.address"]
    assert found[0].category is Category.SCANNING and found[0].severity is Severity.MEDIUM


def test_reported_permission_denials_count_towards_scanning() -> None:
    events = [
        (i * 1.0, Observation(K.PERMISSION_DENIED, "203.0.113.50", "users/eve", METHODS[i % 5]))
        for i in range(20)
    ]
    assert [d.rule_id for d in feed(ScanningDetector(), events)] == ["scanning.address"]


def test_a_client_polling_one_missing_resource_is_not_scanning_until_it_is_extreme() -> None:
    events = [(i * 0.5, call("198.51.100.7", "NOT_FOUND", METHODS[0])) for i in range(99)]
    assert feed(ScanningDetector(), events) == []
    assert [
        d.rule_id
        for d in feed(ScanningDetector(), [*events, (50.0, call("198.51.100.7", "NOT_FOUND", METHODS[0]))])
    ] == ["scanning.address"]


def test_successful_calls_and_other_errors_are_not_scanning() -> None:
    events = [
        (i * 0.1, call("198.51.100.8", status, METHODS[i % 5]))
        for i, status in enumerate(["OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "Unknown"] * 50)
    ]
    assert feed(ScanningDetector(), events) == []


# --- token abuse -----------------------------------------------------------------------------------


def bad_token(address: str, why: str) -> Observation:
    return Observation(K.TOKEN_INVALID, address, method=METHODS[0], detail=why)


def test_three_bad_signatures_are_forged_tokens() -> None:
    found = feed(
        TokenAbuseDetector(), [(i * 1.0, bad_token("203.0.113.66", "bad signature")) for i in range(3)]
    )
    assert [(d.rule_id, d.severity) for d in found] == [("token.forged", Severity.HIGH)]
    assert found[0].category is Category.TOKEN_ABUSE


def test_a_client_retrying_an_expired_token_a_few_times_is_not_token_abuse() -> None:
    assert (
        feed(TokenAbuseDetector(), [(i * 5.0, bad_token("198.51.100.3", "token expired")) for i in range(9)])
        == []
    )


def test_ten_invalid_tokens_from_one_address_are_an_invalid_token_burst() -> None:
    found = feed(
        TokenAbuseDetector(), [(i * 5.0, bad_token("203.0.113.66", "malformed token")) for i in range(10)]
    )
    assert [d.rule_id for d in found] == ["token.invalid_burst"]


def test_a_replayed_refresh_token_is_reported_at_once_and_once_per_window() -> None:
    replay = Observation(
        K.TOKEN_REPLAYED, "203.0.113.70", "users/priya", "/bhiv.identity.v1.AuthService/RefreshToken"
    )
    found = feed(TokenAbuseDetector(), [(0.0, replay), (1.0, replay), (400.0, replay)])
    assert [(d.rule_id, d.time) for d in found] == [
        ("token.refresh_replayed", 0.0),
        ("token.refresh_replayed", 400.0),
    ]


# --- bounded memory --------------------------------------------------------------------------------


def test_detectors_remember_at_most_max_keys_addresses() -> None:
    detector = BruteForceDetector(max_keys=100)
    for i in range(10_000):
        detector.observe(failed(f"10.0.{i // 256}.{i % 256}", f"user{i}"), float(i))
    assert len(detector._addresses) == 100 and len(detector._accounts) == 100


def test_windows_keep_at_most_their_limit() -> None:
    window = EventWindow(60.0, 5)
    for i in range(1000):
        window.add(i * 0.001)
    assert window.count(1.0) == 5
    distinct = DistinctWindow(60.0, 4)
    for i in range(1000):
        distinct.add(str(i), 0.0)
    assert distinct.values() == ["996", "997", "998", "999"]
    bounded: BoundedMap[str, list[int]] = BoundedMap(2, list)
    bounded.touch("a")
    bounded.touch("b")
    bounded.touch("a")
    bounded.touch("c")  # evicts b, the least recently used
    assert bounded.get("b") is None and bounded.get("a") is not None
