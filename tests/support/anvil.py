"""The test suite's anvil comes from the same starter as ``oracle dev``."""

from oracle.chain.anvil import DEV_PRIVATE_KEYS, Anvil, anvil_binary, start_anvil

__all__ = ["DEV_PRIVATE_KEYS", "Anvil", "anvil_binary", "start_anvil"]
