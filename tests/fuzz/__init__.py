"""The project's fuzz suite: every RPC, generated from its descriptor, against a real mesh."""
