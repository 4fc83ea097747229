"""The concerns of the interceptor chain, one module and one ``<Concern>Interceptor`` per concern."""

__all__: list[str] = []
