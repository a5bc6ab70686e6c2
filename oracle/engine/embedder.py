"""Sentence embeddings reduced to sign bits, the form consensus compares (DESIGN.md §3).

The model is loaded once from its local package (nothing is fetched from a model hub)
and runs in float32: reduced precisions flip a few sign bits (docs/consensus.md), which
eats into the verification tolerance for nothing.

On a GPU, :meth:`Embedder.embed` runs ``encode``'s forward passes itself (the same
batches of the same texts in the same order, so the same arithmetic), but leaves each
batch's vectors on the device and copies them back once per call: ``encode`` waits for
every batch to come back before it tokenizes the next, so the device and the host took
turns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device

from oracle.consensus import pack_sign_bits
from oracle.consensus.signal import Centre, signal_bits
from oracle.engine.embedding_models import lookup_embedding_model, resolve_embedding_model
from oracle.errors import InvalidEmbedding

__all__ = ["DEFAULT_BATCH_SIZE", "Embedder"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
"""Texts per forward pass inside one embed() call; the bits do not depend on it."""


class Embedder:
    """One sentence-transformers model, turning texts into packed sign bits."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
    ) -> None:
        """Load the named embedding model (UnknownEmbeddingModel / EmbeddingModelMissing).

        ``threads`` caps torch's CPU threads for the whole process (None: torch's default,
        one per core). A worker that shares the cores with llama.cpp keeps to its share:
        torch's threads would otherwise preempt llama.cpp's, which wait for each other.
        """
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = lookup_embedding_model(model).name
        self.batch_size = max(1, batch_size)
        path = resolve_embedding_model(model)
        started = time.perf_counter()
        self._encoder = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._encoder.eval()
        self.load_seconds = time.perf_counter() - started
        dimensions = self._encoder.get_embedding_dimension()
        if not dimensions or dimensions % 8 != 0:
            raise InvalidEmbedding(
                reason=f"{self.model} gives {dimensions} dimensions; sign bits need a multiple of 8"
            )
        self._dim_bits = int(dimensions)
        logger.info(
            "loaded embedding model",
            extra={
                "model": self.model,
                "device": device,
                "dim_bits": self._dim_bits,
                "load_seconds": round(self.load_seconds, 3),
            },
        )

    @property
    def dim_bits(self) -> int:
        """Sign bits in one embedding (the model's dimensions): 384 for all-MiniLM-L6-v2."""
        return self._dim_bits

    @property
    def dim_bytes(self) -> int:
        """Bytes in one packed embedding: dim_bits / 8."""
        return self._dim_bits // 8

    @property
    def window(self) -> int:
        """Tokens the model reads of a text, its special tokens included (256 word pieces
        for all-MiniLM-L6-v2); it silently drops the rest."""
        window = self._encoder.max_seq_length
        if window is None:  # a model without a limit would read everything
            raise InvalidEmbedding(reason=f"{self.model} states no max_seq_length")
        return int(window)

    def token_count(self, text: str) -> int:
        """The text's tokens for this model, special tokens included, none dropped: more
        than ``window`` means a tail the embedding never sees."""
        return len(self._tokens(text)["input_ids"])

    def fit(self, text: str) -> str:
        """The longest start of ``text`` the model reads whole, cut on a character
        boundary at the end of a token (the tokenizer's offsets); ``text`` itself when it
        fits. Verifiers dispute a reveal longer than ``window``: an honest answer is cut."""
        encoded = self._tokens(text, offsets=True)
        if len(encoded["input_ids"]) <= self.window:
            return text
        # the text's own tokens, in order (special tokens have empty offsets)
        ends = [end for start, end in encoded["offset_mapping"] if end > start]
        keep = self.window - (len(encoded["input_ids"]) - len(ends))
        while keep > 0:
            cut = text[: ends[keep - 1]]
            if self.token_count(cut) <= self.window:  # a cut word may split differently
                return cut
            keep -= 1
        return ""

    def _tokens(self, text: str, *, offsets: bool = False) -> Any:
        return self._encoder.tokenizer(
            text,
            add_special_tokens=True,
            truncation=False,
            return_offsets_mapping=offsets,
            verbose=False,  # a text over the window is what we are measuring, not a mistake
        )

    def embed(self, texts: Sequence[str], centre: Centre | None = None) -> list[bytes]:
        """The packed sign bits of each text, in order, from one encode call: bit i = 1
        when component i > 0, or > the centre's component i when a registered signal's
        ``centre`` is given (``oracle.consensus.signal.signal_bits``).

        Texts longer than the model's window (256 word pieces for all-MiniLM-L6-v2) are
        truncated by the model, the same way on every node.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        if not texts:
            return []
        if self._encoder.device.type == "cpu":
            vectors = self._encoder.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        else:
            vectors = self._encode_on_device(list(texts))
        matrix = np.asarray(vectors, dtype=np.float32)
        expected = self._dim_bits if centre is None else centre.dimensions
        if matrix.ndim != 2 or matrix.shape[1] != expected or not np.isfinite(matrix).all():
            # raises, saying what is wrong
            return [
                pack_sign_bits(row) if centre is None else signal_bits(row, centre)
                for row in matrix
            ]
        # pack_sign_bits (or signal_bits) of each row, in one call (a call per row held a
        # GPU worker's lanes); float32 widens to float64 exactly, as signal_bits compares
        above = matrix > 0 if centre is None else matrix.astype(np.float64) > centre.vector
        return [row.tobytes() for row in np.packbits(above, axis=1)]

    @torch.inference_mode()
    def _encode_on_device(self, texts: list[str]) -> Any:
        """``encode(texts, normalize_embeddings=True)`` as a numpy matrix: its batches
        (texts sorted by length as it sorts them) through the same modules, the vectors
        kept on the device until the last batch is launched."""
        encoder = self._encoder
        order = np.argsort([-len(text) for text in texts])  # encode's order (_input_length)
        if encoder._can_flatten_inputs():  # and its mixing, where inputs are not padded
            order = encoder._interleave_sorted_indices(order)
        device = encoder.device
        batches = []
        for start in range(0, len(texts), self.batch_size):
            features = encoder.preprocess(
                [texts[i] for i in order[start : start + self.batch_size]]
            )
            vectors = encoder(batch_to_device(features, device))["sentence_embedding"]
            batches.append(torch.nn.functional.normalize(vectors, p=2, dim=1))
        host = torch.cat(batches).cpu().numpy()
        matrix = np.empty_like(host)
        matrix[order] = host
        return matrix
