"""The seven services of the mesh, one folder each with the same shape."""

__all__: list[str] = []
