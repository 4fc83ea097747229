"""Social content: ``ContentService`` of ``bhiv.integrations.v1`` (GenerateSocialContent).

:mod:`.writer` writes the posts (the llm service's model, or offline template-and-extract),
:mod:`.servicer` checks the request and builds the response, :mod:`.config` reads
``BHIV_CONTENT_LLM``.
"""

from bhiv_core.services.integrations.content.config import ContentConfig, LlmMode
from bhiv_core.services.integrations.content.servicer import ContentServicer

__all__ = ["ContentConfig", "ContentServicer", "LlmMode"]
