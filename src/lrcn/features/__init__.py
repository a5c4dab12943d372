"""Image features on disk: one memory-mapped store per dataset, built from published per-image
files (``import_features``) or from images with a frozen trunk
(:func:`lrcn.engine.feature_extraction.extract_features`, which runs a model).

The names below load on first use, so ``lrcn`` starts without numpy or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeatureStore": "lrcn.features.store",
    "StoreWriter": "lrcn.features.writer",
    "image_stem": "lrcn.features.store",
    "partial_path": "lrcn.features.store",
    "FORMATS": "lrcn.features.formats",
    "import_features": "lrcn.features.formats",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lrcn.features' has no attribute {name!r}")
