"""Calling the AI agent: the signed webhook and its deadline."""
