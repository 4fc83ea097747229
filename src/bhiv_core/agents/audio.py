"""The audio agent: what a recording is (format, duration, rate, channels) and its words, offline.

Sound is decoded with libsndfile, downmixed and resampled to 16 kHz mono, and transcribed with
pocketsphinx's English model; at most the first :data:`~bhiv_core.media.audio.MAX_TRANSCRIBED_SECONDS`
are transcribed, and the answer says when a recording was cut. When speech recognition is missing
the agent still reports the format; only without a decoder can it do nothing (FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
from types import ModuleType

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
from bhiv_core.media.audio import SOUNDFILE, SPEECH, AudioInfo, Transcriber, Transcript, decode_audio
from bhiv_core.media.engine import EngineUnavailable, LazyEngine
from bhiv_core.runtime.errors import FailedPrecondition

__all__ = ["AudioAgent", "describe"]


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} seconds" if seconds < 120 else f"{seconds / 60:.1f} minutes"


def _describe_info(info: AudioInfo) -> str:
    channels = {1: "1 channel (mono)", 2: "2 channels (stereo)"}.get(
        info.channels, f"{info.channels} channels"
    )
    return (
        f"{info.format} audio ({info.subtype}), {_minutes(info.duration)}, {info.sample_rate} Hz, {channels}."
    )


def describe(
    info: AudioInfo, transcript: Transcript | None, unavailable: str, *, cut_at: float | None
) -> str:
    """The answer for one recording.

    Args:
        info: What the recording is.
        transcript: The recognised words, or None when speech recognition is unavailable.
        unavailable: Why it is unavailable (when ``transcript`` is None).
        cut_at: Seconds transcribed when the recording was longer, else None.

    """
    parts = [_describe_info(info)]
    if transcript is None:
        parts.append(f"Transcription is unavailable here ({unavailable}).")
        return "\n".join(parts)
    if cut_at is not None:
        parts.append(f"Only the first {_minutes(cut_at)} of {_minutes(info.duration)} were transcribed.")
    if transcript.text:
        parts.append(f'Transcript (offline, pocketsphinx; it may contain errors): "{transcript.text}"')
    else:
        parts.append("No speech was recognised.")
    return "\n".join(parts)


class AudioAgent:
    """Reports a recording's format, duration, sample rate and channels, and transcribes it offline.

    Args:
        decoder: The ``soundfile`` module, lazily loaded (:data:`bhiv_core.media.audio.SOUNDFILE`).
        speech: The speech recogniser (:data:`bhiv_core.media.audio.SPEECH`).

    """

    spec = AgentSpec(
        id="audio",
        display_name="Audio",
        description=(
            "Decodes WAV, FLAC and OGG (MP3 where libsndfile has it), reports duration, sample rate and "
            "channels, and transcribes English speech offline (pocketsphinx; first 5 minutes)."
        ),
        input_types=(InputType.AUDIO,),
        intents=AGENT_INTENTS["audio"],
    )

    def __init__(
        self, *, decoder: LazyEngine[ModuleType] = SOUNDFILE, speech: LazyEngine[Transcriber] = SPEECH
    ):
        self._decoder = decoder
        self._speech = speech

    async def answer(self, request: AgentRequest, tools: Tools) -> Reply:
        """Describes and transcribes each audio attachment.

        Raises:
            InvalidArgument: No audio attachment, or one that is unsupported or corrupt.
            FailedPrecondition: No audio decoder here: nothing can be done.

        """
        recordings = attachments_of(request, InputType.AUDIO, "the audio agent needs an audio attachment")
        try:
            soundfile = await self._decoder.get()
        except EngineUnavailable as exc:
            raise FailedPrecondition(
                f"audio cannot be decoded here: {exc.reason}", reason="ENGINE_MISSING"
            ) from exc
        speech, unavailable = await self._speech.get_or_reason()
        answers = []
        for attachment in recordings:
            answer = await asyncio.to_thread(_hear, soundfile, attachment, speech, unavailable)
            answers.append(answer if len(recordings) == 1 else f"Recording {attachment.index + 1}: {answer}")
        return Reply.of_text("\n\n".join(answers))


def _hear(soundfile: ModuleType, attachment: Attachment, speech: Transcriber | None, unavailable: str) -> str:
    decoded = decode_audio(soundfile, attachment.data, field=attachment.field)
    transcript = speech.transcribe(decoded.samples) if speech is not None else None
    return describe(decoded.info, transcript, unavailable, cut_at=decoded.seconds if decoded.cut else None)
