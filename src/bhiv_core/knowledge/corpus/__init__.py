"""The sample corpus: six short Markdown documents written by the BHIV team, shipped in the package.

Vedic concepts, the Bhagavad Gita on action, Ayurveda and the doshas, yoga, study skills, and this
platform's own policies (refunds, shipping, support hours). The orchestration service ingests them
on its first start when its knowledge base is empty, so search and the agents have grounded
material at once (``BHIV_KNOWLEDGE_SAMPLE_CORPUS=off`` turns that off).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

__all__ = ["SAMPLES", "Sample", "read_sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One document of the sample corpus: its file in this package, title and tags."""

    file: str
    title: str
    tags: tuple[str, ...]


SAMPLES: tuple[Sample, ...] = (
    Sample("vedic-concepts.md", "Vedic Concepts: A Short Primer", ("sample", "vedas")),
    Sample("gita-on-action.md", "The Bhagavad Gita on Action", ("sample", "vedas", "gita")),
    Sample("ayurveda-doshas.md", "Ayurveda and the Three Doshas", ("sample", "wellness", "ayurveda")),
    Sample("yoga-basics.md", "Yoga: The Eight Limbs and Daily Practice", ("sample", "wellness", "yoga")),
    Sample("study-skills.md", "Study Skills That Work", ("sample", "education")),
    Sample("platform-policies.md", "BHIV Platform Policies", ("sample", "policies", "support")),
)


def read_sample(sample: Sample) -> str:
    """The Markdown text of a sample document."""
    return resources.files(__name__).joinpath(sample.file).read_text(encoding="utf-8")
