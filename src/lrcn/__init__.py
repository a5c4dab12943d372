"""lrcn: visual question answering with Layer-residual Co-Attention Networks."""

from __future__ import annotations

TYPE_CHECKING = False  # typing's own flag, without importing typing: `import lrcn` loads nothing
if TYPE_CHECKING:
    from pathlib import Path

    from lrcn.engine.inference import LoadedModel

__version__ = "0.1.0"


def from_pretrained(path: str | Path, device: str = "cpu") -> LoadedModel:
    """The model of an exported model folder (``lrcn export --format hf``), a run folder or a
    checkpoint, rebuilt exactly and in eval mode on `device` ("cpu" or "cuda"): ``.model``
    (the torch module), ``.word_vocab``, ``.answer_vocab``. torch loads only when called."""
    from lrcn.engine.inference import load_model

    return load_model(path, device)
