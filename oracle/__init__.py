"""LLM inference for smart contracts, agreed on by independent nodes through embedding consensus."""
