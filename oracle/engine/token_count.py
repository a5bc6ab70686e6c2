"""An LLM's tokens in a text, from the model's vocabulary alone (no weights loaded).

Verification counts a revealed output in tokens of the model it names: longer than the
request's ``maxTokens`` means it was not generated under the request's limit. A node
counts only with models it has; its own answer is cut to the same count before it is
embedded, so that no verifier counting the same way can dispute it.
"""

from __future__ import annotations

import threading

from llama_cpp import Llama

from oracle.engine.models import DEFAULT_LLMS, LlmRegistry, lookup_llm

__all__ = ["ModelTokens"]


class ModelTokens:
    """Counts tokens of one GGUF model as ``tokenize(text)`` gives them: no BOS, special
    tokens read as text (a revealed output is text, never a token sequence)."""

    def __init__(self, model: str, registry: LlmRegistry = DEFAULT_LLMS) -> None:
        """ModelNotInstalled / UnknownModel when the model's file is not here."""
        path = lookup_llm(model, registry).resolve()
        self.model = model
        self._lock = threading.Lock()
        self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._tokens(text))

    def fit(self, text: str, max_tokens: int) -> str:
        """The longest start of ``text`` (on a character boundary) of at most
        ``max_tokens`` tokens; ``text`` itself when it fits."""
        tokens = self._tokens(text)
        if len(tokens) <= max_tokens:
            return text
        with self._lock:
            head = self._vocab.detokenize(tokens[:max_tokens]).decode("utf-8", errors="ignore")
        if text.startswith(head) and self.count(head) <= max_tokens:
            return head
        # the tokens' text is not a start of the text (a normalising vocabulary): search
        low, high = 0, len(text)  # count(text[:low]) <= max_tokens < count(text[:high])
        while high - low > 1:
            middle = (low + high) // 2
            if self.count(text[:middle]) <= max_tokens:
                low = middle
            else:
                high = middle
        return text[:low]

    def _tokens(self, text: str) -> list[int]:
        with self._lock:  # llama_cpp's tokenizer is not documented as thread-safe
            return self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
