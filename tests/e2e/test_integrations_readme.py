"""The README's social-content examples, run as written through the edge (offline: no model)."""

from __future__ import annotations

import re

import pytest

from bhiv_core.mesh import Mesh
from tests.e2e.readme import LOGIN, json_values, readme_block, run_as_written

pytestmark = pytest.mark.e2e


def test_the_readme_social_content_examples_work_through_the_edge(mesh: Mesh) -> None:
    done = run_as_written(LOGIN + readme_block("social-content"), mesh, stop_on_error=False, timeout=120)
    # Two answers, then the two refusals the README shows, in its order.
    assert re.findall(r"Code: (\w+)", done.stderr) == ["InvalidArgument", "FailedPrecondition"], done.stderr
    assert '"reason":"DUPLICATE"' in done.stderr and '"reason":"TOO_SHORT"' in done.stderr
    assert '"reason":"LANGUAGE_NEEDS_MODEL"' in done.stderr
    guide, japanese = json_values(done.stdout)
    assert [p["platform"] for p in guide["posts"]] == ["SOCIAL_PLATFORM_X", "SOCIAL_PLATFORM_INSTAGRAM"]
    assert (guide["provider"], guide["model"]) == ("offline", "template-extract")
    for post in guide["posts"]:
        assert post["text"].startswith("Our new guide to Ayurveda is out!")
        assert post["hashtags"] and all(tag in post["text"] for tag in post["hashtags"])
        assert post["platform_length"] <= post["platform_limit"]
    [post] = japanese["posts"]
    assert post["language"] == "ja"
    assert (post["character_count"], post["platform_length"]) == (63, 52)
    assert post["text"].startswith(
        "新しい倉庫が完成しました 🎉 https://example.com/news/warehouse-opening-2026"
    )
