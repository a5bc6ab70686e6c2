"""Helpers behind the shared fixtures: a local anvil chain and throwaway Postgres databases."""
