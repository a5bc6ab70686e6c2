"""Running one GGUF model with llama-cpp-python, reproducibly.

A node's answer must be reproducible from (model, prompt, temperature, max_tokens, seed):
the seed is passed on every call (a seed given only to the constructor drifts from call
to call), the context is reset before every request (reusing the KV cache of the last
prompt changes Gemma's output even at temperature 0), and the sampling settings that a
request does not carry are pinned here rather than left to the library's defaults,
which differ between its completion and chat paths. Tokens are chosen by coupled
sampling (:mod:`oracle.engine.sampling`, through :class:`CoupledChoice`), the rule every
node samples by, so that nodes with slightly different logits still choose alike.

The text is returned exactly as the model produced it: nothing is stripped or
normalised, because its keccak256 is what the node commits to. The only change is the
library's own: bytes that do not decode as UTF-8 (a character cut by max_tokens) are
dropped.

A generation can be given a wall-clock limit (``stop_at``): the clock is read after
every token, and a generation still running at the limit is cut short and raises
GenerationPastDeadline, since a late answer is no answer. Chat prompts go through the same
completion call as llama_cpp's own chat handler makes (the model's template, its end
token as the stop), so that this per-token check reaches them too.

A runner is not for concurrent use from several threads; calls are serialised by a lock.
Workers run one runner per process (STYLE.md §8).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import Llama, LogitsProcessorList, StoppingCriteriaList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from oracle.engine.models import DEFAULT_LLMS, LlmRegistry, LlmSpec, lookup_llm
from oracle.engine.sampling import (
    MIN_P,
    TOP_K,
    TOP_P,
    LogitNoise,
    candidate_margins,
    choose_token,
)
from oracle.errors import OracleError, OutOfRange

__all__ = [
    "MAX_SEED",
    "CoupledChoice",
    "Generation",
    "GenerationPastDeadline",
    "InvalidGenerationRequest",
    "LlmRunner",
    "ModelHasNoChatTemplate",
    "ModelLoadFailed",
    "PromptTooLong",
    "TokenPieces",
    "request_seed",
]

logger = logging.getLogger(__name__)

MAX_SEED = 2**32 - 2
"""llama.cpp seeds are uint32, and 0xFFFFFFFF (LLAMA_DEFAULT_SEED) means "random"."""

# Sampling settings a request does not carry. Every node must use the same ones for
# answers to be comparable: the filters are coupled sampling's (which chooses the token
# before llama.cpp's chain sees one candidate); the rest are neutral, written out.
_TYPICAL_P = 1.0
_REPEAT_PENALTY = 1.0
_LOAD_SEED = 1  # unused by generation (each call passes its own); 0 would mean "random"
_CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
_SEED_DOMAIN = b"oracle/llm-seed/v2"
_READ_WIDTH = 2 * TOP_K
"""Tokens an answer read back may take at a step: past the top ``TOP_K`` too, at the
margin that takes them into it (another engine's logits may have ranked one 40th where
these rank it 41st)."""
_MAX_READS = 16
"""Passes of one answer read back: each reads one way of cutting it into tokens whole."""

FinishReason = Literal["stop", "length"]


# --- errors ---------------------------------------------------------------------------


class PromptTooLong(OracleError):
    """The prompt and the tokens asked for do not fit the model's context."""

    model: str
    prompt_tokens: int
    max_tokens: int
    context_tokens: int

    def __init__(
        self, *, model: str, prompt_tokens: int, max_tokens: int, context_tokens: int
    ) -> None:
        super().__init__(
            f"{model}: {prompt_tokens} prompt tokens + {max_tokens} max_tokens "
            f"> {context_tokens} context tokens"
        )
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_tokens = context_tokens


class GenerationPastDeadline(OracleError):
    """Generation was cut short at its deadline"""

    model: str
    completion_tokens: int
    stop_at: datetime

    def __init__(self, *, model: str, completion_tokens: int, stop_at: datetime) -> None:
        super().__init__(
            f"{model}: stopped after {completion_tokens} tokens at {stop_at.isoformat()}"
        )
        self.model = model
        self.completion_tokens = completion_tokens
        self.stop_at = stop_at


class InvalidGenerationRequest(OutOfRange):
    """A generation parameter is out of range."""


class ModelLoadFailed(OracleError):
    """llama.cpp could not load the model file."""

    model: str
    path: Path

    def __init__(self, *, model: str, path: Path, reason: str) -> None:
        super().__init__(f"{model} from {path}: {reason}")
        self.model = model
        self.path = path


class ModelHasNoChatTemplate(OracleError):
    """The model is registered for chat prompts but its GGUF file has no chat template."""

    model: str

    def __init__(self, *, model: str) -> None:
        super().__init__(f"{model}; register it with prompt_style='completion'")
        self.model = model


# --- seeds ----------------------------------------------------------------------------


def request_seed(request_id: int, coordinator: str) -> int:
    """The sampling seed of a request: the same for every node that answers it.

    sha256("oracle/llm-seed/v2" || the coordinator's 20 address bytes || request_id as
    32 bytes), the first 8 bytes reduced into 0..MAX_SEED. The address is read as hex
    with or without 0x, in any case.

    Every honest node draws the same random numbers, so nodes running the same model
    give the same answer wherever their arithmetic agrees, and differ only from the first
    token where their logits (another CPU, a GPU, another batch) tip a draw the other
    way. With a seed of its own per node, honest answers are independent samples that
    disagree in substance as often as the model does with itself (docs/consensus.md:
    65 % of SmolLM2's yes/no verdicts at temperature 0.2), and no threshold tells that
    apart from a wrong answer. The seed is public: anyone can replay an answer, which a
    requester could do anyway by running the model.
    """
    if not 0 <= request_id < 2**256:
        raise InvalidGenerationRequest(field="request_id", value=request_id, allowed="a uint256")
    digits = coordinator.removeprefix("0x").removeprefix("0X")
    try:
        address = bytes.fromhex(digits)
    except ValueError:
        address = b""
    if len(address) != 20:
        raise InvalidGenerationRequest(
            field="coordinator", value=coordinator, allowed="a 20-byte hex address"
        )
    digest = hashlib.sha256(_SEED_DOMAIN + address + request_id.to_bytes(32, "big")).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_SEED + 1)


# --- generation -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Generation:
    """One answer and what produced it."""

    text: str
    """Exactly as generated (see the module docstring)."""
    completion_tokens: int
    prompt_tokens: int
    """Tokens the model read, chat template included."""
    finish_reason: FinishReason
    """``stop``: the model ended its answer; ``length``: max_tokens was reached."""
    seed: int
    model: str
    """The on-chain name of the model."""


class LlmRunner:
    """One GGUF model loaded once, answering one request at a time."""

    def __init__(
        self,
        spec: LlmSpec,
        *,
        n_threads: int,
        n_ctx: int | None = None,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
        reads_answers: bool = False,
    ) -> None:
        """Load ``spec``'s model (from ``model_path`` if given, else from the registry).

        ``n_ctx`` overrides the spec's context_tokens. ``reads_answers`` keeps the logits
        of every position read, which :meth:`choice_margins` needs (n_ctx rows of the
        vocabulary's floats). Loading takes a fraction of a second for the default models;
        it raises ModelNotInstalled or ModelLoadFailed.
        """
        if n_threads < 1:
            raise InvalidGenerationRequest(field="n_threads", value=n_threads, allowed=">= 1")
        self.spec = spec
        self.context_tokens = n_ctx if n_ctx is not None else spec.context_tokens
        if self.context_tokens < 1:
            raise InvalidGenerationRequest(field="n_ctx", value=n_ctx, allowed=">= 1")
        self.model_path = model_path or spec.resolve(cache_dir=cache_dir)
        self._lock = threading.Lock()
        self.reads_answers = reads_answers
        started = time.perf_counter()
        self._llm = self._load(n_threads)
        self._chat_template = self._chat_formatter() if spec.prompt_style == "chat" else None
        self._piece_of = TokenPieces(self._llm._model.vocab)
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "loaded model",
            extra={
                "model": spec.name,
                "path": str(self.model_path),
                "n_ctx": self.context_tokens,
                "n_threads": n_threads,
                "load_seconds": round(self.load_seconds, 3),
            },
        )

    @classmethod
    def from_registry(
        cls,
        name: str,
        registry: LlmRegistry = DEFAULT_LLMS,
        *,
        n_threads: int,
        n_ctx: int | None = None,
        cache_dir: Path | None = None,
        reads_answers: bool = False,
    ) -> LlmRunner:
        """Load the model registered under an on-chain name."""
        return cls(
            lookup_llm(name, registry),
            n_threads=n_threads,
            n_ctx=n_ctx,
            cache_dir=cache_dir,
            reads_answers=reads_answers,
        )

    @property
    def model(self) -> str:
        """The on-chain name of the loaded model."""
        return self.spec.name

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens the model reads for this prompt (chat template and BOS included)."""
        return len(self._prompt_tokens(prompt))

    def check_fits(self, prompt: str, max_tokens: int) -> int:
        """The prompt's token count; PromptTooLong when it and max_tokens exceed the context."""
        _check_max_tokens(max_tokens)
        return self._check_fits(self._prompt_tokens(prompt), max_tokens)

    def generate(
        self,
        *,
        prompt: str,
        temperature_milli: int,
        max_tokens: int,
        seed: int,
        stop_at: datetime | None = None,
        logit_noise: LogitNoise | None = None,
    ) -> Generation:
        """Answer a prompt; the same arguments give the same text.

        temperature_milli is in thousandths (700 = 0.7; 0 = greedy). At most max_tokens
        tokens are generated. Raises PromptTooLong before any work when it cannot fit,
        and GenerationPastDeadline when ``stop_at`` (timezone-aware) passes before the
        answer is complete. ``logit_noise`` simulates another machine's arithmetic
        (``oracle calibrate``; nodes never pass it).
        """
        if temperature_milli < 0:
            raise InvalidGenerationRequest(
                field="temperature_milli", value=temperature_milli, allowed=">= 0"
            )
        _check_max_tokens(max_tokens)
        if not 0 <= seed <= MAX_SEED:
            raise InvalidGenerationRequest(field="seed", value=seed, allowed=f"0..{MAX_SEED}")
        prompt_tokens = self._prompt_tokens(prompt)
        self._check_fits(prompt_tokens, max_tokens)
        deadline = _Deadline(stop_at)
        stops: list[Any] = [deadline]
        stop_texts: list[str] = []
        if self._chat_template is not None:  # as llama_cpp's chat handler for the template
            stop_texts.append(self._chat_template.eos_token)
            stops.insert(0, _last_token_is(self._llm.token_eos()))
        sampling: dict[str, Any] = {
            "temperature": temperature_milli / 1000,
            "max_tokens": max_tokens,
            "seed": seed,
            "top_k": TOP_K,
            "top_p": TOP_P,
            "min_p": MIN_P,
            "typical_p": _TYPICAL_P,
            "repeat_penalty": _REPEAT_PENALTY,
            "stream": False,
            "stop": stop_texts,
            "stopping_criteria": StoppingCriteriaList(stops),
            "logits_processor": LogitsProcessorList(
                [CoupledChoice(seed, temperature_milli, logit_noise)]
            ),
        }
        with self._lock:
            # Never reuse the previous request's KV cache (llama_cpp leaves reset untyped).
            self._llm.reset()  # type: ignore[no-untyped-call]
            response: Any = self._llm.create_completion(prompt=prompt_tokens, **sampling)
        usage = response["usage"]
        if stop_at is not None and deadline.reached:
            raise GenerationPastDeadline(
                model=self.spec.name,
                completion_tokens=int(usage["completion_tokens"]),
                stop_at=stop_at,
            )
        return Generation(
            text=response["choices"][0]["text"] or "",
            completion_tokens=int(usage["completion_tokens"]),
            prompt_tokens=int(usage["prompt_tokens"]),
            finish_reason=_finish_reason(response["choices"][0]["finish_reason"]),
            seed=seed,
            model=self.spec.name,
        )

    def choice_margins(
        self,
        *,
        prompt: str,
        output: str,
        temperature_milli: int,
        seed: int,
        max_tokens: int,
        limit: float = np.inf,
    ) -> npt.NDArray[np.float64]:
        """Read an answer back: for each of its tokens, how far this model's logits, given
        the prompt and the answer so far, lay from picking it with this seed
        (:func:`oracle.engine.sampling.candidate_margins`, in logits; 0 where it is the
        pick).

        The answer's text does not say which tokens wrote it: a model often writes a word
        in pieces that its tokenizer would not cut it into. So of the ways to cut the text
        into tokens of the top ``_READ_WIDTH``, the one whose largest margin is smallest is
        read (branch and bound, at most ``_MAX_READS`` passes); where no cut writes the
        whole text, the one that gets furthest, with infinity from where it stops. An
        answer of fewer than ``max_tokens`` tokens ended by the model's choice: its
        end-of-generation token is read last. Margins from ``limit`` up are not told
        apart: a cut is not followed past one, and an answer that no cut writes within it
        gets infinity there (a caller that only asks "within ``limit``?" spares the search
        on answers that are not). Needs ``reads_answers``. Raises PromptTooLong when
        prompt and answer do not fit the context.
        """
        if not self.reads_answers:
            raise OracleError("choice_margins needs a runner loaded with reads_answers=True")
        prompt_tokens = self._prompt_tokens(prompt)
        text = output.encode("utf-8")
        eos = self._llm.token_eos()
        tokens = self._answer_tokens(text, max_tokens, eos)
        self._check_fits(prompt_tokens, max(1, len(tokens)))
        # a search over the ways the model could have cut the text into tokens, for the
        # one whose largest margin is smallest. Each pass reads one path whole. Where
        # several candidates write the text on, the path takes the one with the smallest
        # margin and keeps the others as a branch. A path that comes to a dead end (no
        # candidate writes the text on), or to a margin no smaller than the best whole
        # path's, goes back to the latest branch with a token of a smaller margin left.
        branches: list[_Branch] = []
        decided = 0  # the steps before this one are the path's for good
        best = deepest = np.full(len(tokens), np.inf)
        for _ in range(_MAX_READS):
            candidates, margins = candidate_margins(
                self._read_rows(prompt_tokens, tokens),
                seed=seed,
                temperature_milli=temperature_milli,
                width=_READ_WIDTH,
            )
            bound = float(best.max()) if np.isfinite(best).all() else limit
            found, turn = self._walk(text, tokens, candidates, margins, decided, branches, bound)
            if turn is None:  # the path is whole, or stopped: try the latest branch left
                if np.isfinite(found).all() and float(found.max()) < bound:
                    best = found
                    if best.max() == 0.0:
                        break
                elif np.isfinite(found).sum() > np.isfinite(deepest).sum():
                    deepest = found
                # only a choice at or before the step that set this path's largest margin
                # (or where it stopped) can give a smaller one
                stuck = np.flatnonzero(~np.isfinite(found))
                worst = (
                    int(stuck[0]) if stuck.size else len(found) - 1 - int(np.argmax(found[::-1]))
                )
                turn = _branch_left(branches, min(float(best.max()), limit), worst)
                if turn is None:
                    break
            tokens = [*tokens[: turn.step], turn.tokens[0][1]]
            after = turn.offset + len(self._piece_of(turn.tokens[0][1]))
            tokens += self._answer_tokens(text[after:], max_tokens - len(tokens), eos)
            self._check_fits(prompt_tokens, len(tokens))
            decided = turn.step + 1
        return best if np.isfinite(best).all() else deepest

    def _walk(
        self,
        text: bytes,
        tokens: list[int],
        candidates: npt.NDArray[np.int64],
        margins: npt.NDArray[np.float64],
        decided: int,
        branches: list[_Branch],
        bound: float,
    ) -> tuple[npt.NDArray[np.float64], _Branch | None]:
        """One pass of :meth:`choice_margins` along ``tokens``: their margins (infinity
        from where the pass stopped: a dead end, or a margin of at least ``bound``), and
        the branch to turn to where the model's own cut leaves this path."""
        eos = self._llm.token_eos()
        found = np.full(len(tokens), np.inf)
        offset = 0
        for step, token in enumerate(tokens):
            writes_on = sorted(
                (float(margin), int(candidate))
                for candidate, margin in zip(candidates[step], margins[step], strict=True)
                if self._continues(int(candidate), text, offset, eos)
            )
            if not writes_on:
                return found, None
            if step >= decided:
                branches.append(_Branch(step, offset, writes_on))
                if writes_on[0][1] != token:  # the model's cut leaves this path here
                    return found, branches[-1]
            # (a token decided on an earlier pass can fall out of the top TOP_K when a
            # longer read rounds the prefix's logits otherwise: then it ends this cut)
            margin = next((m for m, t in writes_on if t == token), np.inf)
            if margin >= bound:
                return found, None
            found[step] = margin
            offset += len(self._piece_of(token))
        return found, None

    def _answer_tokens(self, text: bytes, max_tokens: int, eos: int) -> list[int]:
        tokens = self._llm.tokenize(text, add_bos=False, special=False) if text else []
        return [*tokens, eos] if len(tokens) < max_tokens else tokens

    def _read_rows(self, prompt_tokens: list[int], tokens: list[int]) -> npt.NDArray[np.float32]:
        """The logits that chose each of ``tokens`` after the prompt, in one pass.

        The tokens the last pass read up to where these part from them are not read again:
        their cache and logits stand (the same tokens after the same ones give the same
        rows), so a search over cuts of an answer reads each cut from where it turns, and
        the prompt once (docs/consensus.md, "The dispute rule": 3.4 times faster)."""
        start = len(prompt_tokens) - 1  # the row that predicts the answer's first token
        wanted = prompt_tokens + tokens[:-1]
        with self._lock:
            same = Llama.longest_token_prefix(self._llm._input_ids.tolist(), wanted)
            # eval drops the cache from n_tokens on and reads the rest after it
            self._llm.n_tokens = min(same, len(wanted) - 1)
            self._llm.eval(wanted[self._llm.n_tokens :])
            return np.array(self._llm.scores[start : start + len(tokens)], dtype=np.float32)

    def _continues(self, token: int, text: bytes, offset: int, eos: int) -> bool:
        """Whether ``token`` writes the next bytes of ``text`` (the end of generation only
        where the text ends)."""
        if token == eos:
            return offset == len(text)
        piece = self._piece_of(token)
        return bool(piece) and text.startswith(piece, offset)

    def close(self) -> None:
        """Free the model's memory now rather than at garbage collection."""
        with self._lock:
            self._llm.close()

    def __enter__(self) -> LlmRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- inside ---------------------------------------------------------------------

    def _load(self, n_threads: int) -> Llama:
        try:
            return Llama(
                model_path=str(self.model_path),
                n_ctx=self.context_tokens,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                seed=_LOAD_SEED,
                logits_all=self.reads_answers,
                verbose=False,
                # The model's own template, never a format guessed from its metadata.
                chat_format="chat_template.default" if self.spec.prompt_style == "chat" else None,
            )
        except ValueError as exc:  # llama_cpp's "Failed to load model from file"
            raise ModelLoadFailed(
                model=self.spec.name, path=self.model_path, reason=str(exc)
            ) from exc

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        """The formatter llama_cpp builds from the GGUF's template, to count prompt tokens."""
        template = self._llm.metadata.get(_CHAT_TEMPLATE_KEY)
        if not template:
            self._llm.close()
            raise ModelHasNoChatTemplate(model=self.spec.name)
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self._llm.token_eos()),
            bos_token=self._token_text(self._llm.token_bos()),
        )

    def _token_text(self, token: int) -> str:
        return self._llm._model.token_get_text(token) if token != -1 else ""

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens the model will read, built as llama_cpp builds them."""
        if self._chat_template is None:
            # BOS is added when the model asks for it; special tokens are parsed, as
            # llama_cpp's create_completion does for a text prompt.
            return self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        rendered = self._chat_template(messages=[{"role": "user", "content": prompt}])
        return self._llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )

    def _check_fits(self, prompt_tokens: list[int], max_tokens: int) -> int:
        count = len(prompt_tokens)
        if count == 0:
            raise InvalidGenerationRequest(field="prompt", value="", allowed="at least one token")
        if count + max_tokens > self.context_tokens:
            raise PromptTooLong(
                model=self.spec.name,
                prompt_tokens=count,
                max_tokens=max_tokens,
                context_tokens=self.context_tokens,
            )
        return count


class CoupledChoice:
    """A logits processor for llama-cpp-python that leaves its sampler one token: the
    one coupled sampling (:mod:`oracle.engine.sampling`) chooses for this step, so the
    sampler's own chain has a single candidate whatever its draw. One per generation:
    its first call is step 0. With ``noise``, the choice is made on the logits with
    that step's simulated noise added (``LogitNoise``)."""

    def __init__(self, seed: int, temperature_milli: int, noise: LogitNoise | None = None) -> None:
        self._seed = seed
        self._temperature_milli = temperature_milli
        self._noise = noise
        self._prompt_tokens: int | None = None

    def __call__(
        self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        if self._prompt_tokens is None:
            self._prompt_tokens = len(input_ids)
        step = len(input_ids) - self._prompt_tokens
        token = choose_token(
            logits if self._noise is None else self._noise.applied(logits, step),
            seed=self._seed,
            step=step,
            temperature_milli=self._temperature_milli,
        )
        only = np.full_like(logits, -np.inf)
        only[token] = 0.0
        return only


class _Deadline:
    """A stopping criterion that llama_cpp calls after every token: true once ``stop_at``
    has passed (never, without one)."""

    def __init__(self, stop_at: datetime | None) -> None:
        self._at = None if stop_at is None else stop_at.timestamp()
        self.reached = False

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        if self._at is not None and time.time() >= self._at:
            self.reached = True
        return self.reached


def _last_token_is(token: int) -> Any:
    """llama_cpp's chat handler's criterion: stop when the last token read is ``token``."""

    def check(input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        return bool(input_ids[-1] == token)

    return check


@dataclass(slots=True)
class _Branch:
    """A step of an answer read back where candidates write the text on: the path took
    the first of ``tokens`` (margin and token, smallest margin first); the rest are
    untried."""

    step: int
    offset: int
    """Bytes of the text written before this step."""
    tokens: list[tuple[float, int]]


def _branch_left(branches: list[_Branch], bound: float, upto: int) -> _Branch | None:
    """The latest branch at step ``upto`` or before with an untried token whose margin
    is below ``bound``, that token first; the branches after it are dropped."""
    while branches and branches[-1].step > upto:
        branches.pop()
    while branches:
        branch = branches[-1]
        branch.tokens.pop(0)  # the token the path took: tried
        if branch.tokens and branch.tokens[0][0] < bound:
            return branch
        branches.pop()
    return None


class TokenPieces:
    """The bytes each token of a vocabulary writes (``llama_token_to_piece``, special
    tokens as nothing), each looked up once."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._pieces: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = _token_piece(self._vocab, token)
        return piece


def _token_piece(vocab: Any, token: int) -> bytes:
    size = 32
    while True:
        buffer = (ctypes.c_char * size)()
        length = int(llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False))
        if length >= 0:
            return buffer.raw[:length]
        size = -length


def _check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 1:
        raise InvalidGenerationRequest(field="max_tokens", value=max_tokens, allowed=">= 1")


def _finish_reason(reason: object) -> FinishReason:
    if reason == "stop":
        return "stop"
    if reason == "length":
        return "length"
    raise OracleError(f"llama_cpp returned an unexpected finish_reason {reason!r}")
