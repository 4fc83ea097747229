"""Media for the image and audio agents: formats, metadata, OCR and offline speech recognition.

Engines (rapidocr, pocketsphinx, libsndfile) are loaded lazily, once per process, in a worker
thread (:mod:`bhiv_core.media.engine`); their models ship inside their wheels and are loaded by path,
so nothing is downloaded at run time.
"""

from bhiv_core.media.engine import EngineUnavailable, LazyEngine

__all__ = ["EngineUnavailable", "LazyEngine"]
