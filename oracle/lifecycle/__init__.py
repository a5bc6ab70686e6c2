"""The node's side of the protocol: admission, answering, revealing, disputing, finalizing."""
