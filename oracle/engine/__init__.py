"""Engines: LLM and embedding workers, their supervision and scaling."""
