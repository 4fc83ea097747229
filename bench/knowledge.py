"""Knowledge retrieval over 10,000 passages (issue 12 item 7), on a mesh of its own.

The corpus is generated for the benchmark (:func:`generate_corpus`, deterministic): documents of
Markdown sections whose words are drawn from a 12,000-word invented vocabulary with a Zipf
distribution (a few very common words, a long tail of rare ones, as in prose), each document
leaning on a topic of its own, so BM25's term statistics are realistic and a query's words
select a few passages out of many. Every section's paragraph becomes one passage (at most 900
characters), 10,000 in all; the server's passage counts are checked against it.

1. Ingestion: every document through ``IngestDocument`` (orchestration called directly with an
   admin token, 4 concurrent clients, dense retrieval on: each passage is embedded at
   ingestion): passages per second, and orchestration's CPU per passage.
2. ``SearchKnowledge`` (top 5) with queries of 2-5 words taken from random passages, one client
   at a time so the latency is one request's: p50/p99 and orchestration's CPU per request,
   **hybrid** (the mesh's orchestration, ``BHIV_KNOWLEDGE_DENSE=on``) and **BM25 alone** (the same
   data served by orchestration restarted with ``BHIV_KNOWLEDGE_DENSE=off``).
3. ``AgentService/Ask`` offline over the same corpus, the same way (CPU of orchestration and of
   llm, which may write the answer), when the agents are built;
   an orchestration that answers UNIMPLEMENTED prints ``Ask: not built`` (not a failure).

About a minute in all here; ``python -m bench.knowledge`` runs this item alone.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.load import Result, cpu_seconds, measure, table
from bhiv.identity.v1 import auth_service_pb2, auth_service_pb2_grpc
from bhiv.orchestration.v1 import agent_service_pb2, agent_service_pb2_grpc
from bhiv.orchestration.v1 import knowledge_service_pb2 as ks
from bhiv.orchestration.v1 import knowledge_service_pb2_grpc as ks_grpc
from bhiv_core.knowledge import chunk, extract_text
from bhiv_core.mesh import Mesh

PASSAGES = 10_000
SECTIONS_PER_DOCUMENT = 25
VOCABULARY = 12_000
TOPIC_WORDS = 60
INGEST_CLIENTS = 4
QUERIES = 500

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "ch",
    "sh",
    "th",
    "br",
    "tr",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")


@dataclass(frozen=True)
class Corpus:
    """The generated documents and queries."""

    documents: list[tuple[str, str, list[str]]]
    """(title, Markdown text, tags) of each document."""
    passages: int
    """How many passages the documents chunk into."""
    queries: list[str]
    """Search queries, each 2-5 words of one passage."""


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))
        )
        if len(word) >= 3 and word not in seen:
            seen.add(word)
            words.append(word)
    return words


def generate_corpus(passages: int = PASSAGES, seed: int = 12) -> Corpus:
    """Documents whose sections chunk into ``passages`` passages (one per section), and queries.

    Words follow a Zipf law over the vocabulary (rank r drawn with weight 1/r); each document
    also draws a third of its words from its own topic (60 words of the vocabulary's tail), so
    documents differ the way real ones do. The same seed gives the same corpus.
    """
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng, VOCABULARY)
    zipf = list(itertools.accumulate(1.0 / rank for rank in range(1, VOCABULARY + 1)))
    tags = ("alpha", "beta", "gamma", "delta")
    documents: list[tuple[str, str, list[str]]] = []
    passages_of: list[list[str]] = []
    total = 0
    while total < passages:
        sections = min(SECTIONS_PER_DOCUMENT, passages - total)
        topic = rng.sample(vocabulary[200:], TOPIC_WORDS)
        parts: list[str] = []
        for _ in range(sections):
            heading = " ".join(
                rng.choices(topic, k=2) + rng.choices(vocabulary, cum_weights=zipf, k=1)
            ).capitalize()
            count = rng.randint(55, 95)
            common = rng.choices(vocabulary, cum_weights=zipf, k=count)
            body = [rng.choice(topic) if rng.random() < 1 / 3 else common[i] for i in range(count)]
            sentences = [" ".join(body[i : i + 12]).capitalize() + "." for i in range(0, count, 12)]
            parts.append(f"# {heading}\n\n{' '.join(sentences)}")
        text = "\n\n".join(parts)
        title = " ".join(rng.choices(topic, k=3)).title()
        documents.append((title, text, [tags[len(documents) % len(tags)]]))
        extracted = extract_text(text, field="text")
        chunks = chunk(extracted.text, extracted.sections)
        passages_of.append([extracted.text[c.start : c.end] for c in chunks])
        total += len(chunks)
    queries = []
    for _ in range(QUERIES):
        words = rng.choice(rng.choice(passages_of)).lower().replace(".", "").split()
        queries.append(" ".join(rng.sample(words, rng.randint(2, 5))))
    return Corpus(documents, total, queries)


def _admin(mesh: Mesh) -> tuple[str, str]:
    lines = (mesh.data_dir / "admin-credentials").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    return values["username"], values["password"]


async def _token(mesh: Mesh) -> tuple[tuple[str, str], ...]:
    username, password = _admin(mesh)
    async with grpc.aio.insecure_channel(mesh.address("identity")) as channel:
        login = await auth_service_pb2_grpc.AuthServiceStub(channel).Login(
            auth_service_pb2.LoginRequest(username=username, password=password)
        )
    return (("authorization", f"Bearer {login.tokens.access_token}"),)


async def _ingest(mesh: Mesh, corpus: Corpus, metadata: tuple[tuple[str, str], ...]) -> dict[str, float]:
    pid = mesh.procs["orchestration"].pid
    pending = list(enumerate(corpus.documents))
    stored = 0
    async with grpc.aio.insecure_channel(mesh.address("orchestration")) as channel:
        stub = ks_grpc.KnowledgeServiceStub(channel)

        async def client() -> None:
            nonlocal stored
            while pending:
                i, (title, text, tags) = pending.pop()
                reply = await stub.IngestDocument(
                    ks.IngestDocumentRequest(
                        title=title, mime_type="text/plain", text=text, tags=tags, request_id=f"bench-{i}"
                    ),
                    metadata=metadata,
                    timeout=60,
                )
                stored += reply.document.passage_count

        cpu0, t0 = cpu_seconds([pid]), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(INGEST_CLIENTS)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
    if stored != corpus.passages:
        raise RuntimeError(f"orchestration stored {stored} passages, the corpus has {corpus.passages}")
    report = {
        "documents": float(len(corpus.documents)),
        "passages": float(stored),
        "ingest_seconds": round(elapsed, 2),
        "ingest_passages_per_second": round(stored / elapsed, 1),
        "ingest_cpu_ms_per_passage": round(cpu / stored * 1e3, 3),
    }
    print(
        f"  ingested {len(corpus.documents)} documents, {stored} passages in {elapsed:.1f} s "
        f"({INGEST_CLIENTS} clients, dense on): {stored / elapsed:,.0f} passages/s, "
        f"orchestration CPU {cpu / stored * 1e3:.2f} ms/passage"
    )
    return report


async def _search(
    mesh: Mesh, corpus: Corpus, metadata: tuple[tuple[str, str], ...], name: str, seconds: float
) -> Result:
    queries = iter(corpus.queries * 1000)
    async with grpc.aio.insecure_channel(mesh.address("orchestration")) as channel:
        stub = ks_grpc.KnowledgeServiceStub(channel)
        found = await stub.SearchKnowledge(
            ks.SearchKnowledgeRequest(query=corpus.queries[0], top_k=5), metadata=metadata
        )
        if not found.passages:
            raise RuntimeError(f"{name}: a query made of a passage's words found nothing")
        return await measure(
            name,
            lambda: stub.SearchKnowledge(
                ks.SearchKnowledgeRequest(query=next(queries), top_k=5), metadata=metadata
            ),
            server_pids=[mesh.procs["orchestration"].pid],
            seconds=seconds,
            concurrency=1,
        )


async def _ask(
    mesh: Mesh, corpus: Corpus, metadata: tuple[tuple[str, str], ...], seconds: float
) -> Result | str:
    """Ask's latency, or why it was not measured (``not built``: UNIMPLEMENTED)."""
    queries = iter(corpus.queries * 1000)
    async with grpc.aio.insecure_channel(mesh.address("orchestration")) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        try:
            await stub.Ask(
                agent_service_pb2.AskRequest(query=corpus.queries[0]), metadata=metadata, timeout=30
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return "not built"
            return f"failed: {err.code().name} {err.details()}"
        return await measure(
            "Ask (offline), 10,000 passages",
            lambda: stub.Ask(
                agent_service_pb2.AskRequest(query=next(queries)), metadata=metadata, timeout=30
            ),
            # An agent may have the llm service write the answer (offline: extractive): its CPU counts.
            server_pids=[mesh.procs["orchestration"].pid, mesh.procs["llm"].pid],
            seconds=seconds,
            concurrency=1,
        )


def _figures(result: Result) -> dict[str, float]:
    return {
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "cpu_us_per_request": round(result.server_cpu_us_per_call, 0),
        "requests_per_second_one_client": round(result.rps, 1),
    }


async def knowledge_benchmarks(seconds: float = 4.0) -> dict[str, object]:
    """Generates the corpus, starts a mesh, runs the three measurements; prints and returns them."""
    t0 = time.perf_counter()
    corpus = generate_corpus()
    print(
        f"  corpus: {len(corpus.documents)} documents, {corpus.passages} passages, "
        f"generated in {time.perf_counter() - t0:.1f} s"
    )
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "BHIV_LOG_LEVEL": "warning",
            "BHIV_KNOWLEDGE_SAMPLE_CORPUS": "off",
            "BHIV_KNOWLEDGE_DENSE": "on",
        }
        async with Mesh.with_free_ports(Path(tmp), env=env) as mesh:
            metadata = await _token(mesh)
            report["ingestion"] = await _ingest(mesh, corpus, metadata)
            hybrid = await _search(mesh, corpus, metadata, "SearchKnowledge hybrid, top 5", seconds)
            ask = await _ask(mesh, corpus, metadata, seconds)
            # The same data served by BM25 alone: orchestration restarted with dense retrieval off.
            mesh.kill("orchestration")
            mesh.env = {**mesh.env, "BHIV_KNOWLEDGE_DENSE": "off"}
            await mesh.restart("orchestration")
            bm25 = await _search(mesh, corpus, metadata, "SearchKnowledge BM25 only, top 5", seconds)
    measured = [bm25, hybrid] + ([ask] if isinstance(ask, Result) else [])
    print(table(measured))
    report["search_bm25"] = _figures(bm25)
    report["search_hybrid"] = _figures(hybrid)
    report["search_hybrid_vs_bm25_cpu_per_request"] = round(
        hybrid.server_cpu_us_per_call / bm25.server_cpu_us_per_call, 3
    )
    print(f"  SearchKnowledge BM25 only: p50 {bm25.p50_ms:.2f} ms, p99 {bm25.p99_ms:.2f} ms")
    print(f"  SearchKnowledge hybrid:    p50 {hybrid.p50_ms:.2f} ms, p99 {hybrid.p99_ms:.2f} ms")
    print(f"  hybrid vs BM25 CPU per request: {report['search_hybrid_vs_bm25_cpu_per_request']}x")
    if isinstance(ask, Result):
        report["ask"] = _figures(ask)
        print(f"  Ask (offline): p50 {ask.p50_ms:.2f} ms, p99 {ask.p99_ms:.2f} ms")
    else:
        report["ask"] = ask
        print(f"  Ask: {ask}")
    print(f"  knowledge item took {time.perf_counter() - t0:.0f} s")
    return report


if __name__ == "__main__":
    asyncio.run(knowledge_benchmarks())
