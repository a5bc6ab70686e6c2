"""How an answer becomes the sign bits a node reveals: the text embedded, and the bits.

Two steps, both pure and identical on every node (docs/consensus.md, "The signal"):

1. **The text embedded** (``embedding_text``): the delivered answer, never changed, is
   read for embedding without verbatim copies of the request's prompt
   (``strip_question_echo``: a base model that continues its prompt repeats the
   question, and answers to other questions of the same template then read alike), and
   normalised (``normalise_answer``: case, runs of whitespace, surrounding whitespace,
   trailing periods).
2. **The bits** (``signal_bits``): bit i = 1 when component i of the embedding is
   greater than component i of the model's *centre*, the mean embedding over a fixed
   reference corpus (sentence embeddings share a large common component, so raw sign
   bits spend many bits on what every text has). Without a centre it is today's rule,
   ``pack_sign_bits``: bit i = 1 when component i > 0.

One registered signal embeds nothing (``EmbeddingSignal.exact``): it reads only the
answer's first word (``first_word``) and its bits are a digest of that word
(``digest_bits``), so answers agree exactly when their first words do ("No." and "No,
21 is not prime" alike) and lie about half the bits apart otherwise: agreement on a
verdict, a label or a number, for prompts that ask for one.

A centre is part of the embedding model's registration: a small file shipped in the
package (``oracle/consensus/centres/<model>.f32``, float32 little-endian), its sha256
fixed in ``SIGNALS`` and checked whenever it is read (``load_centre``). The contract
only ever sees the bits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from oracle.consensus.bits import BASIS_POINTS, embedding_components
from oracle.errors import InvalidEmbedding, OracleError

__all__ = [
    "EXACT_SEC_DISTANCE_BP",
    "FIRST_WORD_EXACT",
    "RAW",
    "SIGNALS",
    "Centre",
    "CentreMismatch",
    "EmbeddingSignal",
    "build_centre",
    "centre_bytes",
    "digest_bits",
    "embedding_job",
    "embedding_text",
    "first_word",
    "load_centre",
    "normalise_answer",
    "parse_centre",
    "signal_bits",
    "strip_question_echo",
    "useful_sec_distance_bp",
]

_SPACES = re.compile(r"\s+")
# letters and digits of any script, with the periods, commas and apostrophes inside
# ("3.5", "1,200", "don't")
_WORD = re.compile(r"[^\W_]+(?:[.,'][^\W_]+)*")


class CentreMismatch(OracleError):
    """A centring vector is not the registered one."""

    model: str
    reason: str

    def __init__(self, *, model: str, reason: str) -> None:
        super().__init__(f"{model}'s {reason}")
        self.model = model
        self.reason = reason


# --- the text embedded -------------------------------------------------------------------


def strip_question_echo(question: str, answer: str) -> str:
    """``answer`` with every verbatim copy of ``question`` (its surrounding whitespace
    ignored) replaced by a space; ``answer`` itself when nothing but whitespace would
    remain, or when the question is blank.

    Only whole copies go, never part of a word (the prompt "Hi" leaves "Hiking" alone),
    and an answer that quotes part of the question, or rewords it, keeps all of its
    words: nothing a node adds escapes the embedding.

    What ``re.sub`` of the escaped question between word boundaries gives, found with
    ``str.find`` instead: the regex tried the question again at every character, as long
    as the question times the answer (a 64 KB reveal against a 4 KB prompt held a
    verifying worker for seconds).
    """
    echo = question.strip()
    if not echo:
        return answer
    guard_start, guard_end = _is_word(echo[0]), _is_word(echo[-1])
    parts: list[str] = []
    kept_from = start = 0
    while (at := answer.find(echo, start)) != -1:
        end = at + len(echo)
        if (guard_start and at > 0 and _is_word(answer[at - 1])) or (
            guard_end and end < len(answer) and _is_word(answer[end])
        ):
            start = at + 1  # inside a word: no copy here, but one may start further on
            continue
        parts += [answer[kept_from:at], " "]
        kept_from = start = end
    if not parts:
        return answer
    rest = "".join([*parts, answer[kept_from:]])
    return rest if rest.strip() else answer


def _is_word(char: str) -> bool:
    """What ``\\w`` matches in a ``str`` pattern."""
    return char.isalnum() or char == "_"


def normalise_answer(text: str) -> str:
    """Case folded, runs of whitespace made one space, surrounding whitespace and
    trailing periods removed: ``" The capital is Paris.\\n"`` -> ``"the capital is paris"``.
    """
    return _without_trailing_periods(_SPACES.sub(" ", text).strip()).casefold()


def _without_trailing_periods(text: str) -> str:
    r"""``text`` less its last run of periods and whitespace (what ``re.sub(r"[\s.]+$", "",
    text)`` gives, ``\s`` being ``str.isspace``). Not that regex: it tries the run again
    from each of its characters when something follows it, quadratic in the run, and a
    revealed answer of 262 KB of periods would hold an embedding worker for minutes."""
    end = len(text)
    while end and (text[end - 1] == "." or text[end - 1].isspace()):
        end -= 1
    return text[:end]


def first_word(text: str) -> str:
    """The first word of ``text``, case-folded: a run of letters and digits (any
    script) with the periods, commas and apostrophes inside it; "" when there is none.
    ``"No, 21 is not prime."`` -> ``"no"``; ``"$1,200.50 in total"`` -> ``"1,200.50"``."""
    word = _WORD.search(text)
    return word.group(0).casefold() if word else ""


def embedding_text(
    question: str,
    answer: str,
    *,
    strip_echo: bool = False,
    normalise: bool = False,
    first_word_only: bool = False,
) -> str:
    """The text a node embeds for ``answer`` to ``question`` (the request's prompt as
    the model read it). Every option off: the answer itself, as nodes embed it today.
    The delivered answer is never this text; it stays as the model wrote it."""
    text = strip_question_echo(question, answer) if strip_echo else answer
    if first_word_only:
        return first_word(text)
    return normalise_answer(text) if normalise else text


# --- the bits ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Centre:
    """One embedding model's centring vector and the sha256 of its file."""

    model: str
    vector: npt.NDArray[np.float32]
    sha256: str

    @property
    def dimensions(self) -> int:
        return int(self.vector.shape[0])


def signal_bits(vector: npt.ArrayLike, centre: Centre | None = None) -> bytes:
    """The packed bits of an embedding: bit i = 1 when component i > centre i
    (strictly), most significant bit first, as ``pack_sign_bits`` packs them; without a
    centre, when component i > 0 (``pack_sign_bits`` exactly).

    The comparison is exact (float64, to which float32 converts without rounding), so
    the bits do not depend on how a node subtracts; normalising the vector first
    changes them, since the centre is not scaled with it: give the embedding as the
    model returns it with ``normalize_embeddings=True``.
    """
    components = embedding_components(vector)
    if centre is None:
        threshold: npt.NDArray[np.float64] = np.zeros_like(components)
    elif centre.dimensions != components.size:
        raise InvalidEmbedding(
            reason=f"{components.size} dimensions against a centre of {centre.dimensions}"
        )
    else:
        threshold = centre.vector.astype(np.float64)
    return np.packbits(components > threshold).tobytes()


def digest_bits(text: str, dimensions: int) -> bytes:
    """An exact signal's bits: the first ``dimensions`` bits of SHAKE-256 of the text's
    UTF-8 bytes. Equal texts give equal bits; two different texts differ in about half
    of them (fewer than 35 % of 384 with probability about 1e-9)."""
    if dimensions <= 0 or dimensions % 8:
        raise InvalidEmbedding(reason=f"{dimensions} bits is not a positive multiple of 8")
    return hashlib.shake_256(text.encode("utf-8")).digest(dimensions // 8)


def build_centre(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The mean of a corpus's embeddings (one a row), accumulated in float64 and
    rounded once to float32: the vector a centre file holds."""
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise InvalidEmbedding(reason=f"expected a non-empty matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InvalidEmbedding(reason="the corpus holds NaN or infinite components")
    return np.asarray(matrix.mean(axis=0), dtype=np.float32)


def centre_bytes(vector: npt.ArrayLike) -> bytes:
    """A centre file's contents: the components as float32, little-endian, in order."""
    return np.asarray(vector, dtype="<f4").tobytes()


def parse_centre(model: str, data: bytes, *, dimensions: int, sha256: str) -> Centre:
    """A centre read from its file's bytes, refused (CentreMismatch) unless it hashes
    to the registered ``sha256``, holds ``dimensions`` float32 components and they are
    finite."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise CentreMismatch(model=model, reason=f"sha256 is {digest}, not the registered {sha256}")
    if len(data) != 4 * dimensions:
        raise CentreMismatch(
            model=model,
            reason=f"file holds {len(data)} bytes, not {4 * dimensions} ({dimensions} float32)",
        )
    vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise CentreMismatch(model=model, reason="file holds NaN or infinite components")
    vector.setflags(write=False)
    return Centre(model=model, vector=vector, sha256=digest)


# --- the registered signals --------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingSignal:
    """How one registered embedding model turns answers into bits."""

    name: str
    """The name a request would use for it (securityFrame.embeddingModel)."""
    model: str
    """The embedding model (oracle.engine.embedding_models)."""
    dimensions: int
    strip_echo: bool = False
    normalise: bool = False
    centre_sha256: str | None = None
    """sha256 of ``centres/<centre_file>``; None: raw sign bits."""
    centre_file: str | None = None
    exact: bool = False
    """Embed nothing: the bits are ``digest_bits`` of the answer's first word (the
    ``model``'s workers serve it, without running the model)."""

    def text(self, question: str, answer: str) -> str:
        return embedding_text(
            question,
            answer,
            strip_echo=self.strip_echo,
            normalise=self.normalise,
            first_word_only=self.exact,
        )


RAW = EmbeddingSignal(name="all-MiniLM-L6-v2", model="all-MiniLM-L6-v2", dimensions=384)
"""Today's signal: the answer as delivered, raw sign bits."""
FIRST_WORD_EXACT = "first-word-exact/shake256"
"""The exact signal's name: nodes agree when their answers' first words are the same."""

SIGNALS: Mapping[str, EmbeddingSignal] = {
    signal.name: signal
    for signal in (
        RAW,
        EmbeddingSignal(
            name="all-MiniLM-L6-v2/echo-norm-centred-d7b956d1",
            model="all-MiniLM-L6-v2",
            dimensions=384,
            strip_echo=True,
            normalise=True,
            centre_sha256="d7b956d139f5a02ae6fe8f86917d5b827b1a6d9b0b1db6771a8ac73e53233b6d",
            centre_file="all-MiniLM-L6-v2.echo-norm.f32",
        ),
        EmbeddingSignal(
            name=FIRST_WORD_EXACT,
            model="all-MiniLM-L6-v2",
            dimensions=384,
            strip_echo=True,
            exact=True,
        ),
    )
}
"""The signals a node knows. A request names one as its embedding model; all but the
first must be registered on the coordinator (``setEmbeddingModel``, 384 bits) before
requests can use them; development deployments register them (``oracle.chain.deploy``)."""


EXACT_SEC_DISTANCE_BP = 3500
"""The largest secDistance worth asking of an exact signal: two different words lie
about half of the bits apart, within 0.35 with probability about 1e-9, and every
smaller secDistance, down to 0, makes the same answers agree."""


def useful_sec_distance_bp(name: str) -> int:
    """The largest secDistance a request naming ``name`` should ask for:
    ``EXACT_SEC_DISTANCE_BP`` for an exact signal; no limit (all of the bits) else."""
    signal = SIGNALS.get(name)
    return EXACT_SEC_DISTANCE_BP if signal is not None and signal.exact else BASIS_POINTS


def embedding_job(name: str, prompt: str) -> tuple[str, dict[str, str]]:
    """Where a request's embedding runs, and what its job carries besides the text: the
    model whose worker computes it, and for a registered signal other than a model's raw
    sign bits, the signal's name and the request's prompt (for its echo). A name that is
    no signal is a model of its own, with nothing added."""
    signal = SIGNALS.get(name)
    if signal is None or signal.name == signal.model:
        return name, {}
    return signal.model, {"signal": signal.name, "prompt": prompt}


def load_centre(signal: EmbeddingSignal) -> Centre | None:
    """The signal's shipped centre, its sha256 checked (CentreMismatch); None for a
    signal without one."""
    if signal.centre_file is None or signal.centre_sha256 is None:
        return None
    path = resources.files("oracle.consensus").joinpath("centres", signal.centre_file)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CentreMismatch(
            model=signal.name, reason=f"file {signal.centre_file} is not in the package"
        ) from exc
    return parse_centre(
        signal.name, data, dimensions=signal.dimensions, sha256=signal.centre_sha256
    )
