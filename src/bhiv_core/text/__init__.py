"""Text processing for the summarizer, planner, text and content agents, offline and bounded in cost.

Sentences and words (:mod:`.sentences`), extractive summaries (:mod:`.summarize`), key phrases
(:mod:`.keywords`), language identification (:mod:`.language`), an honest clean-up rewrite
(:mod:`.rewrite`), instruction/payload splitting (:mod:`.instructions`), goal parsing and plans
(:mod:`.plan`), and social posts within platform limits (:mod:`.social`, with X's weighted length
in :mod:`.x_length`).
"""

from bhiv_core.text.keywords import Keyword, keywords
from bhiv_core.text.rewrite import Rewrite, clean_up
from bhiv_core.text.sentences import Sentence, sentences
from bhiv_core.text.social import LIMITS, Platform, Post, draft, fit
from bhiv_core.text.summarize import Summary, summarize
from bhiv_core.text.x_length import weighted_length

__all__ = [
    "LIMITS",
    "Keyword",
    "Platform",
    "Post",
    "Rewrite",
    "Sentence",
    "Summary",
    "clean_up",
    "draft",
    "fit",
    "keywords",
    "sentences",
    "summarize",
    "weighted_length",
]
