"""The shared service runtime: configuration, errors, the interceptor chain, the server."""

__all__: list[str] = []
