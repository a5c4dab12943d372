"""``lrcn features import|extract|info|verify``: build and check feature stores.

Only argparse at import; the choices (formats, dtypes, backbones) come from the modules that
define them when the parser is built.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_features_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``features`` and its actions to the ``lrcn`` subcommands."""
    from lrcn.config import DEVICES
    from lrcn.features.formats import FORMATS
    from lrcn.features.store import DTYPES
    from lrcn.models.detectron2_trunk import (
        DETECTRON2_TRUNK_NAMES,
        GRID_SIZES,
        MAX_SIZE_TEST,
        MIN_SIZE_TEST,
    )
    from lrcn.models.image_encoders import TRUNK_LAYERS, TRUNK_NAMES

    p = sub.add_parser("features", help="build and check grid-feature stores",
                       description="Pack image features into one memory-mapped store.")
    actions = p.add_subparsers(dest="features_command", required=True, metavar="ACTION")

    a = actions.add_parser("import", help="pack published per-image feature files into a store")
    a.add_argument("--format", required=True, choices=list(FORMATS),
                   help="trar: (H, W, C) .npy grids; gridfeats: (1, C, H, W) .pth tensors; "
                        "openvqa: bottom-up .npz regions")
    a.add_argument("--src", required=True, help="folder of per-image files (searched recursively)")
    a.add_argument("--out", required=True, help="store folder to create (must not exist)")
    a.add_argument("--dtype", choices=DTYPES, default="float16")
    a.add_argument("--channels", type=int, default=2048, help="feature channels C")
    a.add_argument("--mask-zero-rows", action="store_true",
                   help="mask every region or cell whose features are all zero, as openvqa "
                        "does with the zero rows it pads region lists with")
    a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    a = actions.add_parser("extract", help="extract C5 (or conv4) grids of a frozen trunk "
                                           "from images")
    a.add_argument("--images", required=True, help="image folder (.jpg/.jpeg/.png, recursive)")
    a.add_argument("--backbone", required=True,
                   help=f"torchvision trunk: {', '.join(TRUNK_NAMES)}; or "
                        f"{', '.join(DETECTRON2_TRUNK_NAMES)}: grid-feats-vqa's ResNeXt-152 "
                        "32x8d trained on Visual Genome (detectron2 checkpoint, no detectron2 "
                        "needed)")
    a.add_argument("--weights", help="weights of the backbone: a torchvision state dict, or for "
                                     "x152 grid-feats-vqa's detectron2 checkpoint (X-152.pth)")
    a.add_argument("--out", required=True, help="store folder to create (must not exist)")
    a.add_argument("--image-size", type=int, default=None,
                   help="torchvision trunks: images are resized to N x N; the grid is N/S x "
                        "N/S, S the stride of --layer (default 512)")
    a.add_argument("--layer", choices=TRUNK_LAYERS, default=None,
                   help="torchvision trunks: the stage whose output is the grid: layer4 (C5, "
                        "stride 32, 2048 channels; the default) or layer3 (conv4, stride 16, "
                        "1024 channels; with resnet101 and --image-size 224, CLEVR's standard "
                        "14 x 14 x 1024 features)")
    a.add_argument("--grid", type=int, choices=GRID_SIZES, default=None,
                   help=f"x152 only: each image is resized as grid-feats-vqa does (shortest "
                        f"side {MIN_SIZE_TEST}, longest at most {MAX_SIZE_TEST}, aspect ratio "
                        "kept), its variable res5 grid is average-pooled to G x G (default 16)")
    a.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass and per progress record (x152 runs one image "
                        "at a time, each at its own size: this is only rows per record)")
    a.add_argument("--device", choices=DEVICES, default="cpu")
    a.add_argument("--dtype", choices=DTYPES, default="float16")
    a.add_argument("--random-weights", action="store_true",
                   help="no weights file: random features, for tests only")
    a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")

    for name, text in (("info", "describe a store (checks sizes, does not hash)"),
                       ("verify", "check every file of a store against its sha256")):
        a = actions.add_parser(name, help=text)
        a.add_argument("store", help="store folder")
        a.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def run_features(args: argparse.Namespace) -> dict[str, Any]:
    """Run one features action; returns a JSON-safe summary of the resulting store."""
    from lrcn.features.store import FeatureStore

    started = time.perf_counter()
    action = args.features_command
    if action == "import":
        from lrcn.features.formats import import_features

        store = import_features(args.format, Path(args.src), Path(args.out), args.dtype,
                                args.channels, args.mask_zero_rows)
    elif action == "extract":
        from lrcn.engine.feature_extraction import extract_features

        store = extract_features(args.images, args.backbone, args.weights, args.out,
                                 args.image_size, args.batch_size, args.random_weights,
                                 args.device, args.dtype, grid=args.grid, layer=args.layer)
    else:
        store = FeatureStore.open(args.store)
        if action == "verify":
            store.verify()
            log.info("%s: every file matches its sha256", store.path)
    with store:
        log.info("%s: %d items, %s %s %s%s%s", store.path, store.count, store.layout,
                 tuple(store.item_shape), store.dtype, ", with mask" if store.has_mask else "",
                 ", with boxes" if store.has_boxes else "")
        return {
            "action": action,
            "store": str(store.path),
            "count": store.count,
            "layout": store.layout,
            "item_shape": list(store.item_shape),
            "dtype": store.dtype,
            "has_mask": store.has_mask,
            "has_boxes": store.has_boxes,
            "source": store.source,
            "verified": action == "verify",
            "seconds": round(time.perf_counter() - started, 3),
        }
