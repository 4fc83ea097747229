"""BHIV Core: the hand-written runtime, interceptors, services and edge of the mesh."""

__all__: list[str] = []
