"""The SSRF-safe client against real HTTP(S) servers on 127.0.0.x, with injected DNS answers.

Host names such as ``api.partner.test`` never reach a real resolver: each test injects one that
maps them to loopback addresses, and counts how often it is asked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path

import pytest

from bhiv_core.outbound.http import (
    ADDRESS_FORBIDDEN,
    HOST_NOT_ALLOWED,
    OutboundBadRequest,
    OutboundClient,
    OutboundPolicy,
    OutboundRefused,
    OutboundTimeout,
    OutboundUnavailable,
    address_problem,
    parse_allowlist,
)
from tests.outbound.servers import Route, certificate, local_http

PARTNER = "api.partner.test"


class Dns:
    """An injected resolver: each name answers the next of its scripted answers (the last repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, host: str) -> Iterable[str]:
        self.asked.append(host)
        script = self.answers.get(host)
        if not script:
            raise OSError("name not known")
        return script.pop(0) if len(script) > 1 else script[0]


def client(*allow: str, dns: Dns | None = None, **policy: float) -> OutboundClient:
    return OutboundClient(OutboundPolicy(allow, **policy), dns or Dns({PARTNER: [["127.0.0.1"]]}))  # type: ignore[arg-type]


async def refusal(call: object) -> OutboundRefused:
    with pytest.raises(OutboundRefused) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_an_allowlisted_host_is_called_with_the_headers_given() -> None:
    with local_http() as server:
        answer = await client(PARTNER, "127.0.0.1").request(
            "GET", f"http://{PARTNER}:{server.port}/v1/items?q=1", headers={"Authorization": "Bearer t0k3n"}
        )
    assert answer.status == 200 and answer.body == b"ok" and not answer.truncated
    assert server.paths == ["/v1/items?q=1"]
    seen = server.seen[0].headers
    assert seen["authorization"] == "Bearer t0k3n"
    assert seen["host"] == f"{PARTNER}:{server.port}"  # the name, though the socket went to the address


async def test_a_host_not_on_the_allowlist_is_refused_before_any_byte_leaves() -> None:
    dns = Dns({"evil.test": [["127.0.0.1"]]})
    with local_http() as server:
        err = await refusal(
            client(PARTNER, "127.0.0.1", dns=dns).request("GET", f"http://evil.test:{server.port}/")
        )
    assert err.reason == HOST_NOT_ALLOWED and err.host == "evil.test"
    assert server.seen == [] and dns.asked == []  # not even resolved


async def test_a_name_that_resolves_to_loopback_is_refused_without_an_address_entry() -> None:
    with local_http() as server:
        err = await refusal(client(PARTNER).request("GET", f"http://{PARTNER}:{server.port}/"))
    assert err.reason == ADDRESS_FORBIDDEN and err.host == PARTNER
    assert "loopback" in str(err)
    assert server.seen == []


async def test_a_name_that_resolves_to_loopback_is_called_when_the_address_is_allowlisted() -> None:
    with local_http() as server:
        answer = await client(PARTNER, "127.0.0.1").request("GET", f"http://{PARTNER}:{server.port}/")
    assert answer.status == 200 and server.paths == ["/"]


async def test_a_cidr_entry_covers_the_addresses_in_its_range() -> None:
    with local_http("127.0.0.3") as server:
        dns = Dns({PARTNER: [["127.0.0.3"]]})
        answer = await client(PARTNER, "127.0.0.0/30", dns=dns).request(
            "GET", f"http://{PARTNER}:{server.port}/"
        )
        assert answer.status == 200
        refused = await refusal(
            client(PARTNER, "127.0.0.0/31", dns=dns).request("GET", f"http://{PARTNER}:{server.port}/")
        )
    assert refused.reason == ADDRESS_FORBIDDEN


async def test_every_resolved_address_is_checked_not_just_the_first() -> None:
    dns = Dns({PARTNER: [["127.0.0.2", "127.0.0.3"]]})
    with local_http("127.0.0.2") as server:
        err = await refusal(
            client(PARTNER, "127.0.0.2", dns=dns).request("GET", f"http://{PARTNER}:{server.port}/")
        )
    assert err.reason == ADDRESS_FORBIDDEN and server.seen == []


async def test_dns_rebinding_cannot_move_the_connection_to_a_forbidden_address() -> None:
    # The name answers an allowed address once, then a forbidden one (a rebinding attacker's DNS).
    # Both addresses serve on the same port: a client that checked one answer and let the socket
    # layer resolve again would reach 127.0.0.3.
    dns = Dns({PARTNER: [["127.0.0.2"], ["127.0.0.3"]]})
    with local_http("127.0.0.2") as allowed, local_http("127.0.0.3", allowed.port) as forbidden:
        outbound = client(PARTNER, "127.0.0.2", dns=dns)
        answer = await outbound.request("GET", f"http://{PARTNER}:{allowed.port}/")
        assert answer.status == 200
        assert allowed.paths == ["/"] and forbidden.seen == []
        assert dns.asked == [PARTNER]  # resolved once, connected to exactly what was checked
        # The next call sees the rebound answer, checks it, and refuses it.
        err = await refusal(outbound.request("GET", f"http://{PARTNER}:{allowed.port}/"))
    assert err.reason == ADDRESS_FORBIDDEN and forbidden.seen == []


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # 127.0.0.1 as one decimal number (inet_aton reads it)
        "http://0177.0.0.1/",  # octal
        "http://0x7f.0.0.1/",  # hex
        "http://0x7f000001/",
        "http://127.1/",  # short form
        "http://127.0.0.1./",  # trailing dot
        "http://017700000001/",
    ],
)
async def test_numeric_host_forms_are_refused_and_never_resolved(url: str) -> None:
    dns = Dns({})
    outbound = client("127.0.0.1", "*.partner.test", dns=dns)
    err = await refusal(outbound.request("GET", url))
    assert err.reason == ADDRESS_FORBIDDEN and "ambiguous" in str(err)
    assert outbound.url_problem(url) is not None
    assert dns.asked == []


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:7f00:1]/",  # IPv4-mapped loopback, hex
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback, dotted
        "http://[::1]/",
        "http://[::]/",
        "http://0.0.0.0/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://224.0.0.1/",
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[2002:a9fe:a9fe::]/",  # 6to4 of the metadata address
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[::7f00:1]/",  # IPv4-compatible
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
        "http://[fc00::1]/",
        "http://240.0.0.1/",
    ],
)
async def test_literal_forbidden_addresses_are_refused_in_every_form(url: str) -> None:
    err = await refusal(client(PARTNER, "*.partner.test").request("GET", url, timeout=2))
    assert err.reason == ADDRESS_FORBIDDEN


async def test_an_ipv4_mapped_literal_is_the_ipv4_address_for_the_allowlist() -> None:
    with local_http() as server:
        answer = await client("127.0.0.1").request("GET", f"http://[::ffff:127.0.0.1]:{server.port}/")
    assert answer.status == 200 and server.paths == ["/"]


async def test_ipv6_loopback_is_reached_only_through_its_entry() -> None:
    with local_http("::1") as server:
        url = f"http://[::1]:{server.port}/six"
        assert (await refusal(client("127.0.0.1").request("GET", url))).reason == ADDRESS_FORBIDDEN
        answer = await client("::1").request("GET", url)
        assert answer.status == 200
        dns = Dns({PARTNER: [["::1"]]})
        assert (
            await client(PARTNER, "[::1]", dns=dns).request("GET", f"http://{PARTNER}:{server.port}/")
        ).status == 200
    assert server.paths == ["/six", "/"]
    assert server.seen[0].headers["host"] == f"[::1]:{server.port}"


def test_metadata_addresses_need_an_entry_naming_them_exactly() -> None:
    url = "http://169.254.169.254/latest/meta-data/"
    assert client("169.254.0.0/16").url_problem(url) is not None
    assert client("0.0.0.0/0").url_problem(url) is not None
    assert client("169.254.169.254").url_problem(url) is None
    assert client("169.254.0.0/16").url_problem("http://169.254.1.1/") is None


def test_global_addresses_pass_and_their_ipv6_forms_too() -> None:
    for text in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"):
        assert address_problem(ipaddress.ip_address(text)) is None, text


@pytest.mark.parametrize(
    "entry",
    ["2130706433", "0177.0.0.1", "*.com", "exa mple.com", "10.0.0.1/33", "[::1", "http://x.test", "*."],
)
def test_a_bad_allowlist_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allowlist([entry])


def test_suffix_entries_match_subdomains_not_the_domain_itself() -> None:
    outbound = client("*.partner.test")
    assert outbound.url_problem("http://a.partner.test/") is None
    assert outbound.url_problem("http://a.b.partner.test/") is None
    assert outbound.url_problem("http://partner.test/") is not None
    assert outbound.url_problem("http://evilpartner.test/") is not None
    assert outbound.url_problem("http://API.PARTNER.TEST./") is None  # case and trailing dot


@pytest.mark.parametrize(
    "url",
    [
        "ftp://api.partner.test/",
        "http://user:pw@api.partner.test/",
        "http://api.partner.test:0/",
        "http://api.partner.test:99999/",
        "http://[fe80::1%25eth0]/",
        "http://api.partner.test\t/",
        "http://api.partner.test/\r\nX: y",
        "http://ápi.partner.test/",
        "http://%61pi.partner.test/",
        "http:///nohost",
    ],
)
async def test_malformed_urls_are_bad_requests(url: str) -> None:
    with pytest.raises(OutboundBadRequest):
        await client(PARTNER, "127.0.0.1").request("GET", url)


async def test_header_injection_is_refused() -> None:
    outbound = client(PARTNER, "127.0.0.1")
    for headers in (
        {"X-A": "v\r\nX-Injected: 1"},
        {"Bad Name": "v"},
        {"Host": "other.test"},
        {"Transfer-Encoding": "chunked"},
    ):
        with pytest.raises(OutboundBadRequest):
            await outbound.request("GET", f"http://{PARTNER}/", headers=headers)


async def test_a_slow_server_times_out() -> None:
    with local_http() as server, pytest.raises(OutboundTimeout) as err:
        await client(PARTNER, "127.0.0.1").request("GET", f"http://{PARTNER}:{server.port}/slow", timeout=0.3)
    assert PARTNER in str(err.value) and "/slow" not in str(err.value)


async def test_a_closed_port_is_unavailable() -> None:
    with local_http() as server:
        port = server.port
    with pytest.raises(OutboundUnavailable):
        await client(PARTNER, "127.0.0.1").request("GET", f"http://{PARTNER}:{port}/")


async def test_an_unknown_name_is_unavailable() -> None:
    with pytest.raises(OutboundUnavailable):
        await client("nowhere.partner.test").request("GET", "http://nowhere.partner.test/")


@pytest.mark.parametrize("shape", ["length", "chunked", "close"])
async def test_a_large_body_is_cut_at_the_cap(shape: str) -> None:
    body = bytes(range(256)) * 40  # 10240 bytes
    route = Route(body=body, chunked=shape == "chunked", close_delimited=shape == "close")
    with local_http() as server:
        server.routes["/big"] = route
        server.routes["/small"] = Route(
            body=body[:4096], chunked=shape == "chunked", close_delimited=shape == "close"
        )
        outbound = client(PARTNER, "127.0.0.1", max_response_bytes=4096)
        big = await outbound.request("GET", f"http://{PARTNER}:{server.port}/big")
        exact = await outbound.request("GET", f"http://{PARTNER}:{server.port}/small")
        per_call = await outbound.request(
            "GET", f"http://{PARTNER}:{server.port}/big", max_response_bytes=100
        )
    assert big.body == body[:4096] and big.truncated
    assert exact.body == body[:4096] and not exact.truncated
    assert per_call.body == body[:100] and per_call.truncated


async def test_a_redirect_is_returned_as_is_unless_following_is_asked() -> None:
    with local_http() as server:
        server.routes["/old"] = Route(302, {"Location": "http://169.254.169.254/latest/meta-data/"})
        answer = await client(PARTNER, "127.0.0.1").request("GET", f"http://{PARTNER}:{server.port}/old")
    assert answer.status == 302
    assert answer.headers["location"] == "http://169.254.169.254/latest/meta-data/"


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", ADDRESS_FORBIDDEN),
        ("http://[fd00:ec2::254]/", ADDRESS_FORBIDDEN),
        ("http://[::ffff:127.0.0.1]:{port}/", ADDRESS_FORBIDDEN),
        ("http://[::ffff:7f00:1]:{port}/", ADDRESS_FORBIDDEN),
        ("http://2130706433:{port}/", ADDRESS_FORBIDDEN),
        ("http://evil.test:{port}/", HOST_NOT_ALLOWED),
        ("http://localhost:{port}/", HOST_NOT_ALLOWED),
    ],
)
async def test_a_followed_redirect_is_checked_like_the_first_url(location: str, reason: str) -> None:
    # The partner's server is on 127.0.0.2 (allowlisted by address); 127.0.0.1 is not.
    dns = Dns({PARTNER: [["127.0.0.2"]], "evil.test": [["127.0.0.2"]]})
    with local_http("127.0.0.2") as server, local_http("127.0.0.1", 0) as loopback:
        server.routes["/old"] = Route(307, {"Location": location.format(port=loopback.port)})
        outbound = client(PARTNER, "127.0.0.2", dns=dns)
        err = await refusal(outbound.request("GET", f"http://{PARTNER}:{server.port}/old", max_redirects=5))
        not_followed = await outbound.request("GET", f"http://{PARTNER}:{server.port}/old")
    assert err.reason == reason
    assert not_followed.status == 307
    assert loopback.seen == []


async def test_a_followed_redirect_within_the_policy_arrives_and_keeps_credentials_on_the_same_origin() -> (
    None
):
    with local_http() as server:
        server.routes["/old"] = Route(301, {"Location": "/new"})
        answer = await client(PARTNER, "127.0.0.1").request(
            "GET",
            f"http://{PARTNER}:{server.port}/old",
            headers={"Authorization": "Bearer t"},
            max_redirects=1,
        )
    assert answer.status == 200 and answer.url.endswith("/new")
    assert server.paths == ["/old", "/new"]
    assert server.seen[1].headers["authorization"] == "Bearer t"


async def test_credentials_are_dropped_when_a_redirect_changes_host() -> None:
    dns = Dns({PARTNER: [["127.0.0.1"]], "cdn.partner.test": [["127.0.0.1"]]})
    with local_http() as server:
        server.routes["/old"] = Route(302, {"Location": f"http://cdn.partner.test:{server.port}/new"})
        answer = await client(PARTNER, "cdn.partner.test", "127.0.0.1", dns=dns).request(
            "GET",
            f"http://{PARTNER}:{server.port}/old",
            headers={
                "Authorization": "Bearer t",
                "X-Api-Key": "k3y",
                "Cookie": "s=1",
                "Accept": "text/plain",
            },
            max_redirects=3,
            credential_headers=("x-api-key",),
        )
    assert answer.status == 200
    first, second = server.seen
    assert first.headers["authorization"] == "Bearer t" and first.headers["x-api-key"] == "k3y"
    assert second.headers["host"] == f"cdn.partner.test:{server.port}"
    assert {"authorization", "x-api-key", "cookie"}.isdisjoint(second.headers)
    assert second.headers["accept"] == "text/plain"


async def test_303_continues_as_get_without_body_and_307_keeps_method_and_body() -> None:
    with local_http() as server:
        server.routes["/see"] = Route(303, {"Location": "/result"})
        server.routes["/temp"] = Route(307, {"Location": "/again"})
        outbound = client(PARTNER, "127.0.0.1")
        base = f"http://{PARTNER}:{server.port}"
        await outbound.request(
            "POST", f"{base}/see", body=b"payload", headers={"Content-Type": "text/plain"}, max_redirects=1
        )
        await outbound.request("POST", f"{base}/temp", body=b"payload", max_redirects=1)
    (post, get, post2, again) = server.seen
    assert (post.method, post.body) == ("POST", b"payload")
    assert (get.method, get.body, "content-type" in get.headers) == ("GET", b"", False)
    assert (again.method, again.body) == ("POST", b"payload") and post2.path == "/temp"


async def test_redirects_stop_after_max_redirects_with_the_last_3xx() -> None:
    with local_http() as server:
        server.routes["/loop"] = Route(302, {"Location": "/loop"})
        answer = await client(PARTNER, "127.0.0.1").request(
            "GET", f"http://{PARTNER}:{server.port}/loop", max_redirects=3
        )
    assert answer.status == 302 and len(server.seen) == 4


async def test_https_verifies_the_certificate_against_the_host_name(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, PARTNER)
    trusted = ssl.create_default_context(cafile=str(cert))
    with local_http(tls=(cert, key)) as server:
        outbound = OutboundClient(
            OutboundPolicy((PARTNER, "other.partner.test", "127.0.0.1")),
            Dns({PARTNER: [["127.0.0.1"]], "other.partner.test": [["127.0.0.1"]]}),
            ssl_context=trusted,
        )
        answer = await outbound.request("GET", f"https://{PARTNER}:{server.port}/tls")
        assert answer.status == 200
        # The same address under a name the certificate does not carry fails the TLS check.
        with pytest.raises(OutboundUnavailable) as err:
            await outbound.request("GET", f"https://other.partner.test:{server.port}/tls")
        assert "TLS" in str(err.value)
        # And the system trust store does not know the test CA.
        with pytest.raises(OutboundUnavailable):
            await client(PARTNER, "127.0.0.1").request("GET", f"https://{PARTNER}:{server.port}/tls")
    assert server.paths == ["/tls"]


async def test_proxy_settings_in_the_environment_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_http("127.0.0.3") as proxy, local_http() as server:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.3:{proxy.port}")
        answer = await client(PARTNER, "127.0.0.1").request("GET", f"http://{PARTNER}:{server.port}/direct")
    assert answer.status == 200 and server.paths == ["/direct"] and proxy.seen == []


async def test_errors_never_carry_the_path_query_or_headers() -> None:
    secret = "sk_live_SECRET"
    with local_http() as server:
        port = server.port
    outbound = client(PARTNER, "127.0.0.1")
    url = f"http://{PARTNER}:{port}/v1/{secret}?key={secret}"
    errors: list[Exception] = []
    for call in (
        outbound.request("GET", url, headers={"Authorization": secret}),
        client(PARTNER).request("GET", url, headers={"Authorization": secret}),
        client("x.test").request("GET", url, headers={"Authorization": secret}),
    ):
        try:
            await call
        except Exception as exc:
            errors.append(exc)
    assert len(errors) == 3
    assert all(secret not in str(e) for e in errors)


async def _raw_server(answer: bytes) -> tuple[asyncio.Server, int]:
    """A server on 127.0.0.1 that reads a request head and writes ``answer`` as is."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 100\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    ],
    ids=[
        "hex-prefix",
        "plus",
        "minus",
        "no-crlf-after-chunk",
        "listed-lengths",
        "two-lengths",
        "signed-length",
    ],
)
async def test_a_malformed_body_framing_is_unavailable(answer: bytes) -> None:
    server, port = await _raw_server(answer)
    async with server:
        with pytest.raises(OutboundUnavailable, match="malformed"):
            await client("127.0.0.1").request("GET", f"http://127.0.0.1:{port}/")


async def test_agreeing_repeated_lengths_and_strict_chunks_are_read() -> None:
    for answer in (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n",
    ):
        server, port = await _raw_server(answer)
        async with server:
            response = await client("127.0.0.1").request("GET", f"http://127.0.0.1:{port}/")
        assert response.status == 200 and response.body.startswith(b"hello")
