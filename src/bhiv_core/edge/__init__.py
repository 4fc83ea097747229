"""The Envoy edge: config generation, the Envoy binary, and running it."""
