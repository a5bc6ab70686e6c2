"""Everything that talks to the chain: contract artifacts and bindings, listener, tx outbox."""
