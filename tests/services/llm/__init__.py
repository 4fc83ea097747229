"""Tests of the llm service."""
