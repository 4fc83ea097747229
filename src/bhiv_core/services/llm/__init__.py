"""The llm service: models, completions, conversations and usage (``bhiv.llm.v1``)."""

__all__: list[str] = []
