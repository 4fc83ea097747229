"""The image agent over real OCR: what the image is, the text in it, and what it refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from bhiv_core.agents.base import AGENT_INTENTS, AgentRequest, Attachment, InputType
from bhiv_core.agents.image import ImageAgent
from bhiv_core.media.image import ocr_engine
from bhiv_core.runtime.errors import InvalidArgument
from tests.agents.media_support import IndexTools, index_tools, text_of
from tests.media.images import bmp_header_only, encoded, rendered

SIGN = rendered([(30, 40, "NO ENTRY"), (30, 140, "Staff only beyond this point")], (900, 240))


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[IndexTools]:
    async with index_tools(tmp_path) as made:
        yield made


def _image(data: bytes, index: int = 0, mime: str = "image/png") -> Attachment:
    return Attachment(index, InputType.IMAGE, mime, "sign.png", data)


def test_the_spec_is_the_image_agent() -> None:
    spec = ImageAgent.spec
    assert (spec.id, spec.input_types, spec.intents) == ("image", (InputType.IMAGE,), AGENT_INTENTS["image"])


async def test_the_answer_states_the_image_and_its_text(tools: IndexTools) -> None:
    started = time.perf_counter()
    reply = await ImageAgent().answer(AgentRequest("", [_image(encoded(SIGN))]), tools)
    text = await text_of(reply)
    print(f"\nimage agent answer (PNG 900x240): {time.perf_counter() - started:.2f} s")
    assert text.startswith("A PNG image, 900x240 pixels, mode RGB, 1 frame.")
    assert '1. "NO ENTRY"' in text and '2. "Staff only beyond this point"' in text
    assert reply.sources == []


async def test_a_question_about_the_text_is_answered_from_ocr_only(tools: IndexTools) -> None:
    reply = await ImageAgent().answer(AgentRequest("What does the sign say?", [_image(encoded(SIGN))]), tools)
    text = await text_of(reply)
    assert 'The image\'s text, as read by OCR: "NO ENTRY" / "Staff only beyond this point"' in text


async def test_an_image_without_text_says_so_and_does_not_guess(tools: IndexTools) -> None:
    blank = encoded(Image.new("RGB", (300, 200), "skyblue"))
    text = await text_of(await ImageAgent().answer(AgentRequest("what does it say?", [_image(blank)]), tools))
    assert "No text was found in the image." in text
    assert "I can't say what it says" in text


async def test_location_metadata_is_mentioned_but_not_leaked(tools: IndexTools) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Nikon"
    where = exif.get_ifd(ExifTags.IFD.GPSInfo)
    where[ExifTags.GPS.GPSLatitudeRef] = "S"
    where[ExifTags.GPS.GPSLatitude] = (33.0, 52.0, 4.44)
    where[ExifTags.GPS.GPSLongitude] = (151.0, 12.0, 36.6)
    data = encoded(SIGN, "JPEG", exif=exif.tobytes())
    text = await text_of(
        await ImageAgent().answer(AgentRequest("", [_image(data, mime="image/jpeg")]), tools)
    )
    assert "camera Nikon" in text
    assert "It carries location (GPS) metadata, which is not shown." in text
    assert not [n for n in ("33", "4.44", "151", "36.6") if n in text]


async def test_without_ocr_the_agent_still_reports_the_image(tools: IndexTools) -> None:
    agent = ImageAgent(ocr=ocr_engine(module="bhiv_no_such_ocr_package"))
    text = await text_of(
        await agent.answer(AgentRequest("what does the sign say", [_image(encoded(SIGN))]), tools)
    )
    assert text.startswith("A PNG image, 900x240 pixels")
    assert "OCR is unavailable here" in text and "bhiv_no_such_ocr_package" in text
    assert "I can't say what the text in the image says." in text
    assert "NO ENTRY" not in text


async def test_concurrent_first_requests_load_the_engine_once(tools: IndexTools) -> None:
    engine = ocr_engine()
    agent = ImageAgent(ocr=engine)
    request = AgentRequest("", [_image(encoded(SIGN))])
    replies = await asyncio.gather(*(agent.answer(request, tools) for _ in range(3)))
    assert engine.loads == 1
    for reply in replies:
        assert "NO ENTRY" in await text_of(reply)


async def test_several_images_are_each_described(tools: IndexTools) -> None:
    other = encoded(rendered([(20, 20, "Second page")], (500, 100)))
    text = await text_of(
        await ImageAgent().answer(AgentRequest("", [_image(encoded(SIGN)), _image(other, index=1)]), tools)
    )
    assert "Image 1: A PNG image, 900x240" in text and "Image 2: A PNG image, 500x100" in text
    assert "Second page" in text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "UNREADABLE_IMAGE"),
        (bmp_header_only(40_000, 40_000), "IMAGE_TOO_LARGE"),
    ],
    ids=["corrupt", "bomb"],
)
async def test_bad_images_are_invalid_argument_on_the_attachment_field(
    tools: IndexTools, data: bytes, reason: str
) -> None:
    request = AgentRequest(
        "", [Attachment(0, InputType.TEXT, "text/plain", "", b"hi", "hi"), _image(data, index=1)]
    )
    with pytest.raises(InvalidArgument) as exc:
        await ImageAgent().answer(request, tools)
    assert [(v.field, v.reason) for v in exc.value.violations] == [("attachments[1].data", reason)]


async def test_no_image_attachment_is_invalid_argument(tools: IndexTools) -> None:
    with pytest.raises(InvalidArgument) as exc:
        await ImageAgent().answer(AgentRequest("describe this image"), tools)
    assert [(v.field, v.reason) for v in exc.value.violations] == [("attachments", "REQUIRED")]
