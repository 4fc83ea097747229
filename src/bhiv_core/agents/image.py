"""The image agent: what an image is (format, size, metadata) and the text in it, read by OCR.

The answer is extractive: it states the image's format, size, mode, frames and metadata, and quotes
the lines OCR read, in reading order with their confidence. A question about the image's text
("what does the sign say?") is answered from those lines only; when OCR found nothing, or is not
available here, the answer says so rather than guessing. Location metadata is said to be present,
never quoted.
"""

from __future__ import annotations

import asyncio
import re
from typing import Final

from bhiv_core.agents.base import (
    AGENT_INTENTS,
    AgentRequest,
    AgentSpec,
    Attachment,
    InputType,
    Reply,
    Tools,
    attachments_of,
)
from bhiv_core.media.engine import LazyEngine
from bhiv_core.media.image import OCR, ImageInfo, OcrEngine, OcrText, for_ocr, inspect_image, open_image

__all__ = ["ImageAgent", "describe", "read_image"]

MAX_LINES: Final = 100
"""The most OCR lines quoted in an answer; the others are counted."""

_ASKS_TEXT = re.compile(
    r"\b(say|says|said|text|read|reads|written|write|writing|sign|label|words?|caption)\b", re.I
)


def _describe_info(info: ImageInfo) -> str:
    frames = "1 frame" if info.frames == 1 else f"{info.frames} frames"
    lines = [f"A {info.format} image, {info.width}x{info.height} pixels, mode {info.mode}, {frames}."]
    meta = []
    if info.camera:
        meta.append(f"camera {info.camera}")
    if info.taken:
        meta.append(f"taken {info.taken}")
    if info.software:
        meta.append(f"software {info.software}")
    if info.orientation_text and info.orientation != 1:
        meta.append(f"orientation {info.orientation_text} (corrected before reading)")
    if info.dpi:
        meta.append(f"{info.dpi[0]}x{info.dpi[1]} DPI")
    if meta:
        lines.append("Metadata: " + "; ".join(meta) + ".")
    if info.has_location:
        lines.append("It carries location (GPS) metadata, which is not shown.")
    return "\n".join(lines)


def describe(info: ImageInfo, text: OcrText | None, unavailable: str, query: str) -> str:
    """The answer for one image.

    Args:
        info: What the image is.
        text: The OCR result, or None when OCR is unavailable.
        unavailable: Why OCR is unavailable (when ``text`` is None).
        query: The question asked, if any.

    """
    parts = [_describe_info(info)]
    asks_text = bool(_ASKS_TEXT.search(query))
    if text is None:
        parts.append(f"OCR is unavailable here ({unavailable}), so the image's text was not read.")
        if asks_text:
            parts.append("I can't say what the text in the image says.")
    elif not text.lines:
        parts.append("No text was found in the image.")
        if asks_text:
            parts.append("I can't say what it says: OCR read no text.")
    else:
        shown = text.lines[:MAX_LINES]
        if asks_text:
            parts.append("The image's text, as read by OCR: " + " / ".join(f'"{ln.text}"' for ln in shown))
        count = f"{len(text.lines)} line{'s' if len(text.lines) != 1 else ''}"
        found = [f"Text found by OCR ({count}, in reading order):"]
        found += [f'{i}. "{ln.text}" (confidence {ln.confidence:.2f})' for i, ln in enumerate(shown, start=1)]
        if len(text.lines) > len(shown):
            found.append(f"…and {len(text.lines) - len(shown)} more lines.")
        parts.append("\n".join(found))
    return "\n".join(parts)


class ImageAgent:
    """Reports an image's format, size and metadata, and the text OCR reads in it.

    Args:
        ocr: The OCR engine; the process's own (:data:`bhiv_core.media.image.OCR`) by default.

    """

    spec = AgentSpec(
        id="image",
        display_name="Image",
        description=(
            "Reports an image's format, size, mode, frames and metadata (camera, date, orientation, DPI; "
            "location only as present) and the text in it, read offline by OCR (rapidocr)."
        ),
        input_types=(InputType.IMAGE,),
        intents=AGENT_INTENTS["image"],
    )

    def __init__(self, *, ocr: LazyEngine[OcrEngine] = OCR):
        self._ocr = ocr

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        """Describes each image attachment; raises InvalidArgument when there is none or one is unreadable."""
        images = attachments_of(request, InputType.IMAGE, "the image agent needs an image attachment")
        engine, unavailable = await self._ocr.get_or_reason()
        answers = []
        for attachment in images:
            info, text = await asyncio.to_thread(read_image, attachment, engine)
            answer = describe(info, text, unavailable, request.query)
            answers.append(answer if len(images) == 1 else f"Image {attachment.index + 1}: {answer}")
        return Reply.of_text("\n\n".join(answers))


def read_image(attachment: Attachment, engine: OcrEngine | None) -> tuple[ImageInfo, OcrText | None]:
    """Opens, inspects and (with an engine) reads an image attachment (blocking: run it in a thread).

    Raises:
        InvalidArgument: The attachment is not a readable image (on its field).

    """
    image = open_image(attachment.data, field=attachment.field)
    with image:
        info = inspect_image(image, field=attachment.field)
        if engine is None:
            return info, None
        return info, engine.read(for_ocr(image, field=attachment.field))
