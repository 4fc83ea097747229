"""Audio: decoding with libsndfile (soundfile) and offline transcription with pocketsphinx.

:func:`decode_audio` reads WAV, FLAC, OGG (and MP3 where the bundled libsndfile has it), reports
format, duration, sample rate and channels, and returns at most :data:`MAX_TRANSCRIBED_SECONDS` of
the sound downmixed to mono and resampled to 16 kHz (numpy: a windowed-sinc low-pass, then linear
interpolation; linear in the input's length), read block by block so memory stays bounded.
Unsupported formats (WebM) and corrupt data are :class:`~bhiv_core.runtime.errors.InvalidArgument`
on the attachment's field.

:class:`Transcriber` runs pocketsphinx with the English acoustic model, language model and
dictionary its wheel ships. :data:`SOUNDFILE` and :data:`SPEECH` are the process's engines, loaded
on first use.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import numpy as np

from bhiv_core.media.engine import EngineUnavailable, LazyEngine, import_engine
from bhiv_core.runtime.errors import FieldViolation, InvalidArgument

__all__ = [
    "MAX_TRANSCRIBED_SECONDS",
    "SAMPLE_RATE",
    "SOUNDFILE",
    "SPEECH",
    "AudioInfo",
    "DecodedAudio",
    "Transcriber",
    "Transcript",
    "decode_audio",
    "resample",
    "soundfile_engine",
    "speech_engine",
]

SAMPLE_RATE: Final = 16_000
"""The rate pocketsphinx's acoustic model expects (Hz, mono)."""

MAX_TRANSCRIBED_SECONDS: Final = 300.0
"""The most seconds of sound decoded and transcribed (the first five minutes); the rest is said to be cut."""

SILENCE: Final = 1e-3
"""A recording whose peak stays below this (-60 dBFS) is silent: not sent to the recogniser."""

MAX_CHANNELS: Final = 64
"""The most channels read (libsndfile allows 1024; a header claiming more is refused)."""

MIN_RATE: Final = 1_000
MAX_RATE: Final = 768_000
_TAPS: Final = 63
_BLOCK_SAMPLES: Final = 1 << 20
_WEBM_MAGIC: Final = b"\x1a\x45\xdf\xa3"


def _invalid(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument(violations=[FieldViolation(field, description, reason)])


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a sound file is.

    Attributes:
        format: libsndfile's container name (``WAV``, ``FLAC``, ``OGG``, ``MP3``).
        subtype: Its encoding (``PCM_16``, ``VORBIS``...).
        sample_rate: Frames per second.
        channels: Channels per frame.
        frames: Frames in the file (as its header or stream says).

    """

    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        """Seconds of sound."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """A decoded file: its description and its first seconds, mono at :data:`SAMPLE_RATE`.

    Attributes:
        info: The file's format.
        samples: Float32 samples in [-1, 1], mono, 16 kHz.
        cut: Whether the sound was longer than what was decoded (:data:`MAX_TRANSCRIBED_SECONDS`).

    """

    info: AudioInfo
    samples: np.ndarray[Any, np.dtype[np.float32]]
    cut: bool

    @property
    def seconds(self) -> float:
        """Seconds of sound decoded."""
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Transcript:
    """What was recognised: the words (may be empty) and how long recognition took."""

    text: str
    seconds: float


def _low_pass(cutoff: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A Hann-windowed sinc low-pass of :data:`_TAPS` taps; ``cutoff`` in cycles per sample."""
    n = np.arange(_TAPS) - (_TAPS - 1) / 2
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(_TAPS)
    return np.asarray(taps / taps.sum(), dtype=np.float64)


def resample(
    samples: np.ndarray[Any, np.dtype[Any]], rate: int, target: int = SAMPLE_RATE
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Resamples mono sound from ``rate`` to ``target`` Hz.

    Down-sampling first removes what lies above the target's Nyquist frequency (a 63-tap low-pass),
    then interpolates linearly: O(len(samples)), no FFT of the whole signal.
    """
    x = np.asarray(samples, dtype=np.float64)
    if rate == target or len(x) == 0:
        return x.astype(np.float32)
    if rate > target and len(x) > _TAPS:
        x = np.convolve(x, _low_pass(0.45 * target / rate), mode="same")
    count = int(len(x) * target / rate)
    positions = np.arange(count, dtype=np.float64) * (rate / target)
    return np.interp(positions, np.arange(len(x), dtype=np.float64), x).astype(np.float32)


def decode_audio(
    soundfile: ModuleType, data: bytes, *, field: str, max_seconds: float = MAX_TRANSCRIBED_SECONDS
) -> DecodedAudio:
    """Decodes a sound file's first ``max_seconds`` to mono 16 kHz (blocking: call it from a thread).

    Args:
        soundfile: The ``soundfile`` module (see :data:`SOUNDFILE`).
        data: The file's bytes.
        field: The request field path of the data, for errors.
        max_seconds: The most seconds decoded.

    Raises:
        InvalidArgument: Empty, an unsupported format (WebM, MP3 without libsndfile support), corrupt
            data, or an impossible sample rate.

    """
    if not data:
        raise _invalid(field, "the audio is empty", "EMPTY_AUDIO")
    if data.startswith(_WEBM_MAGIC):
        raise _invalid(
            field,
            "WebM/Matroska audio is not supported (libsndfile cannot decode it): send WAV, FLAC, OGG or MP3",
            "UNSUPPORTED_AUDIO_FORMAT",
        )
    looks_mp3 = data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    if looks_mp3 and "MP3" not in soundfile.available_formats():
        raise _invalid(
            field,
            "MP3 is not supported by this build of libsndfile: send WAV, FLAC or OGG",
            "UNSUPPORTED_AUDIO_FORMAT",
        )
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            info = AudioInfo(
                format=str(sound.format),
                subtype=str(sound.subtype),
                sample_rate=int(sound.samplerate),
                channels=int(sound.channels),
                frames=max(int(sound.frames), 0),
            )
            if not MIN_RATE <= info.sample_rate <= MAX_RATE:
                raise _invalid(
                    field,
                    f"a sample rate of {info.sample_rate} Hz is out of range ({MIN_RATE}-{MAX_RATE} Hz)",
                    "BAD_SAMPLE_RATE",
                )
            if not 1 <= info.channels <= MAX_CHANNELS:
                raise _invalid(
                    field, f"{info.channels} channels: 1 to {MAX_CHANNELS} are read", "UNSUPPORTED_CHANNELS"
                )
            limit = int(max_seconds * info.sample_rate)
            # Blocks of at most ~1M samples (4 MB), whatever the header claims.
            blocksize = max(256, min(info.sample_rate, _BLOCK_SAMPLES // info.channels))
            blocks = []
            read = 0
            for block in sound.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
                take = block[: limit - read]
                blocks.append(take.mean(axis=1, dtype=np.float32))
                read += len(take)
                if read >= limit:
                    break
            cut = info.frames > limit
    except InvalidArgument:
        raise
    except (RuntimeError, ValueError, TypeError, OSError, EOFError) as exc:
        # soundfile.LibsndfileError (a RuntimeError) for unknown formats and corrupt streams.
        raise _invalid(
            field,
            f"not a readable sound file (WAV, FLAC, OGG or MP3): {str(exc)[:120]}",
            "UNREADABLE_AUDIO",
        ) from exc
    mono = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if len(mono) == 0:
        raise _invalid(field, "the audio holds no sound", "EMPTY_AUDIO")
    return DecodedAudio(info, resample(mono, info.sample_rate), cut)


class Transcriber:
    """pocketsphinx with the English model of its wheel (one utterance at a time)."""

    def __init__(self, pocketsphinx: Any, model_dir: Path):
        self._decoder = pocketsphinx.Decoder(
            hmm=str(model_dir / "en-us" / "en-us"),
            lm=str(model_dir / "en-us" / "en-us.lm.bin"),
            dict=str(model_dir / "en-us" / "cmudict-en-us.dict"),
            loglevel="FATAL",
        )
        self._lock = threading.Lock()

    def transcribe(self, samples: np.ndarray[Any, np.dtype[np.float32]]) -> Transcript:
        """Recognises 16 kHz mono float samples (blocking: call it from a worker thread)."""
        started = time.perf_counter()
        if len(samples) == 0 or float(np.max(np.abs(samples))) < SILENCE:
            # pocketsphinx "hears" a word in digital silence: nothing to recognise.
            return Transcript("", time.perf_counter() - started)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        with self._lock:
            self._decoder.start_utt()
            # One call with full_utt: cepstral mean normalisation over the whole recording. Fed in
            # pieces, pocketsphinx normalises live from the previous utterance's estimate, so the
            # same recording was heard differently on a fresh decoder than on a used one.
            self._decoder.process_raw(pcm, no_search=False, full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
        text = " ".join(str(hypothesis.hypstr).split()) if hypothesis is not None else ""
        return Transcript(text, time.perf_counter() - started)


def soundfile_engine(module: str = "soundfile") -> LazyEngine[ModuleType]:
    """The audio decoder (``soundfile`` over libsndfile), loaded lazily; tests name a missing module."""

    def load() -> ModuleType:
        return import_engine(module)

    return LazyEngine("audio decoder", load)


def speech_engine(module: str = "pocketsphinx", model_dir: Path | None = None) -> LazyEngine[Transcriber]:
    """A lazily loaded speech recogniser.

    Args:
        module: The package to import (tests name a missing one).
        model_dir: The folder holding ``en-us/``; the package's own model folder by default.

    """

    def load() -> Transcriber:
        pocketsphinx = import_engine(module)
        folder = model_dir or Path(pocketsphinx.get_model_path())
        needed = ("en-us/en-us/mdef", "en-us/en-us.lm.bin", "en-us/cmudict-en-us.dict")
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise EngineUnavailable(f"the speech model files are missing ({', '.join(missing)})")
        return Transcriber(pocketsphinx, folder)

    return LazyEngine("speech recognition", load)


SOUNDFILE: Final = soundfile_engine()
"""The process's audio decoder (loaded on first use)."""

SPEECH: Final = speech_engine()
"""The process's speech recogniser (loaded on first use)."""
