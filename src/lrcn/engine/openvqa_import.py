"""``lrcn import openvqa``: an openvqa / mcan-vqa MCAN checkpoint as an lrcn run folder.

MCAN (Yu et al. 2019) as openvqa and mcan-vqa implement it is LRCN-ED without the
layer-residual mechanism, which adds no parameters. What differs is conventions, and the
imported run's config selects openvqa's for each: its layer norm (``model.norm: openvqa``),
all-zero feature rows as padding (``model.mask_zero_rows``), uniform attention for a query
without keys (``model.no_key_attention: uniform``), and its vocabularies
(`lrcn.data.openvqa`), saved in the checkpoint. Every openvqa tensor maps onto one lrcn
tensor, or onto a slice of one where lrcn fuses projections:

================================================  ============================================
openvqa (``backbone.`` ...)                       lrcn (``net.`` ...)
================================================  ============================================
embedding, lstm                                   embed, lstm
adapter.frcn_linear (mcan-vqa: img_feat_linear)  image_proj
enc_list.i.mhatt.linear_{q,k,v}                   question_blocks.i.self_attn.qkv_proj (q;k;v)
enc_list.i.mhatt.linear_merge                     question_blocks.i.self_attn.out_proj
enc_list.i.ffn.mlp.fc.linear, .mlp.linear         question_blocks.i.ffn.fc1, .fc2
enc_list.i.norm{1,2}.{a_2,b_2}                    question_blocks.i.norm{1,2}.{weight,bias}
dec_list.i.mhatt1 (as mhatt above)                image_layers.i.self_attn
dec_list.i.mhatt2.linear_q, linear_{k,v}          image_layers.i.guided_attn.q_proj, .kv_proj
dec_list.i.ffn, norm{1,2,3}                       image_layers.i.ffn, norm{1,2,3}
attflat_img.mlp.fc.linear, .mlp.linear            image_pool.fc1, .fc2
attflat_img.linear_merge                          fuse_image
attflat_lang (as attflat_img)                     question_pool, fuse_question
proj_norm, proj                                   fuse_norm, head
================================================  ============================================

A tensor left over on either side is an error that names it.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lrcn.config import RunConfig, load_config, save_config
from lrcn.data.openvqa import read_answer_dict
from lrcn.engine.checkpoint import (
    BEST, CHECKPOINTS, Checkpoint, read_torch_file, save_checkpoint, weight_mismatch,
)
from lrcn.engine.setup import build_word_vocab
from lrcn.errors import LrcnError
from lrcn.fileio import commit_folder
from lrcn.models import create_model

log = logging.getLogger(__name__)

MODELS = {"mcan_small": "mcan-small", "mcan_large": "mcan-large"}  # --model -> preset
IMAGE_LINEARS = {"openvqa": "adapter.frcn_linear", "mcan-vqa": "img_feat_linear"}


def code_base(state: Mapping[str, torch.Tensor]) -> str:
    """Which code base saved `state`: mcan-vqa names its image projection img_feat_linear
    (and builds its vocabulary without CLS), openvqa adapter.frcn_linear."""
    return "mcan-vqa" if f"{IMAGE_LINEARS['mcan-vqa']}.weight" in state else "openvqa"


def read_openvqa_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The checkpoint as openvqa and mcan-vqa save it (``{"state_dict", "optimizer",
    "lr_base"[, "epoch"]}``, or a bare state dict), read with ``weights_only=True`` unless
    `trust_pickle`; the state dict loses any ``module.`` prefix (DataParallel)."""
    if not path.is_file():
        raise LrcnError(f"checkpoint not found: {path}")
    payload = read_torch_file(path, trust_pickle=trust_pickle,
                              refusal_hint="; if you trust the file, pass --trust-pickle")
    state = payload.get("state_dict", payload) if isinstance(payload, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise LrcnError(f"{path}: not an openvqa checkpoint (expected a dict with a "
                        "'state_dict' of tensors, or a state dict)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    extra = payload if payload is not state else {}
    return {"state_dict": dict(state), "epoch": extra.get("epoch"),
            "lr_base": extra.get("lr_base")}


class _Mapper:
    """Builds lrcn's state dict from openvqa's, remembering what it read and what was absent."""

    def __init__(self, source: Mapping[str, torch.Tensor]) -> None:
        self.source = source
        self.used: set[str] = set()
        self.absent: list[str] = []
        self.out: dict[str, torch.Tensor] = {}

    def take(self, name: str) -> torch.Tensor | None:
        if name not in self.source:
            self.absent.append(name)
            return None
        self.used.add(name)
        return self.source[name]

    def put(self, dst: str, *srcs: str, params: tuple[str, ...] = ("weight", "bias"),
            renamed: tuple[str, ...] | None = None) -> None:
        """``dst.<param>`` = the ``src.<param>`` of every src, concatenated along dim 0."""
        for param, new in zip(params, renamed or params):
            parts = [self.take(f"{src}.{param}") for src in srcs]
            if all(p is not None for p in parts):
                self.out[f"net.{dst}.{new}"] = torch.cat(parts) if len(parts) > 1 else parts[0]

    def norm(self, dst: str, src: str) -> None:
        self.put(dst, src, params=("a_2", "b_2"), renamed=("weight", "bias"))

    def attention(self, dst: str, src: str, cross: bool) -> None:
        if cross:
            self.put(f"{dst}.q_proj", f"{src}.linear_q")
            self.put(f"{dst}.kv_proj", f"{src}.linear_k", f"{src}.linear_v")
        else:
            self.put(f"{dst}.qkv_proj", f"{src}.linear_q", f"{src}.linear_k", f"{src}.linear_v")
        self.put(f"{dst}.out_proj", f"{src}.linear_merge")

    def ffn(self, dst: str, src: str) -> None:
        self.put(f"{dst}.fc1", f"{src}.mlp.fc.linear")
        self.put(f"{dst}.fc2", f"{src}.mlp.linear")


def count_layers(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Blocks ``prefix.0``, ``prefix.1``, ... in `state`."""
    found = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def openvqa_to_lrcn(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lrcn's ``VQAModel`` state dict (LRCN-ED) from an openvqa / mcan-vqa MCAN state dict.

    Raises LrcnError naming the openvqa tensors the mapping needs and the state lacks, and
    those it leaves unused (a bounding-box adapter, another model's tensors)."""
    m = _Mapper(state)
    m.put("embed", "embedding", params=("weight",))
    m.put("lstm", "lstm", params=("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"))
    m.put("image_proj", IMAGE_LINEARS[code_base(state)])
    for i in range(count_layers(state, "backbone.enc_list")):
        src, dst = f"backbone.enc_list.{i}", f"question_blocks.{i}"
        m.attention(f"{dst}.self_attn", f"{src}.mhatt", cross=False)
        m.ffn(f"{dst}.ffn", f"{src}.ffn")
        m.norm(f"{dst}.norm1", f"{src}.norm1")
        m.norm(f"{dst}.norm2", f"{src}.norm2")
    for i in range(count_layers(state, "backbone.dec_list")):
        src, dst = f"backbone.dec_list.{i}", f"image_layers.{i}"
        m.attention(f"{dst}.self_attn", f"{src}.mhatt1", cross=False)
        m.attention(f"{dst}.guided_attn", f"{src}.mhatt2", cross=True)
        m.ffn(f"{dst}.ffn", f"{src}.ffn")
        for j in (1, 2, 3):
            m.norm(f"{dst}.norm{j}", f"{src}.norm{j}")
    for stream, pool, fuse in (("img", "image_pool", "fuse_image"),
                               ("lang", "question_pool", "fuse_question")):
        m.put(f"{pool}.fc1", f"attflat_{stream}.mlp.fc.linear")
        m.put(f"{pool}.fc2", f"attflat_{stream}.mlp.linear")
        m.put(fuse, f"attflat_{stream}.linear_merge")
    m.norm("fuse_norm", "proj_norm")
    m.put("head", "proj")
    unused = sorted(set(state) - m.used)
    if m.absent or unused:
        parts = []
        if m.absent:
            parts.append(f"missing openvqa tensors {_names(m.absent)}")
        if unused:
            parts.append(f"openvqa tensors with no place in LRCN-ED {_names(unused)}")
        raise LrcnError("the checkpoint is not openvqa's MCAN as lrcn reads it: "
                        + "; ".join(parts))
    return m.out


def _names(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown


def imported_config(model: str, state: Mapping[str, torch.Tensor],
                    data_root: Path) -> RunConfig:
    """The preset of `model` with the sizes the checkpoint's tensors state, checked against
    it; `state` is a complete openvqa MCAN state dict (`openvqa_to_lrcn` accepted it)."""
    if model not in MODELS:
        raise LrcnError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
    cfg = load_config(MODELS[model])
    cfg.data.data_root = str(data_root)
    cfg.data.word_vocab = code_base(state)  # the vocabulary rule of the code base
    m = cfg.model
    stated = {  # model field: (the checkpoint's value, the tensor that says it)
        "layers": (count_layers(state, "backbone.enc_list"), "backbone.enc_list blocks"),
        "d_model": (state["lstm.weight_hh_l0"].shape[1], "lstm.weight_hh_l0"),
        "ffn_dim": (state["backbone.enc_list.0.ffn.mlp.fc.linear.weight"].shape[0],
                    "backbone.enc_list.0.ffn.mlp.fc.linear.weight"),
        "pool_hidden": (state["attflat_img.mlp.fc.linear.weight"].shape[0],
                        "attflat_img.mlp.fc.linear.weight"),
        "fused_dim": (state["proj.weight"].shape[1], "proj.weight"),
    }
    for name, (value, where) in stated.items():
        if getattr(m, name) != value:
            other = [k for k in MODELS if k != model]
            raise LrcnError(f"the checkpoint has model.{name} = {value} ({where}), --model "
                            f"{model} has {getattr(m, name)}: is it {' or '.join(other)}?")
    glimpses = state["attflat_img.mlp.linear.weight"].shape[0]
    if glimpses != 1:
        raise LrcnError(f"the checkpoint pools with {glimpses} glimpses (FLAT_GLIMPSES); LRCN "
                        "pools with one")
    m.word_dim = state["embedding.weight"].shape[1]
    m.feature_channels = state[f"{IMAGE_LINEARS[code_base(state)]}.weight"].shape[1]
    return cfg


def import_openvqa(checkpoint: str | Path, data_root: str | Path, answer_dict: str | Path,
                   model: str, out: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """Write the run folder `out` holding the openvqa checkpoint as an lrcn model; a summary.

    `out` appears whole or not at all. The word vocabulary is rebuilt from the question files
    under `data_root` and must have as many words as the checkpoint's embedding; the answer
    vocabulary (`answer_dict`) as many answers as its classifier.
    """
    checkpoint, data_root, out = Path(checkpoint), Path(data_root), Path(out)
    if out.exists():
        raise LrcnError(f"{out} already exists; choose another --out or delete it first")
    saved = read_openvqa_checkpoint(checkpoint, trust_pickle)
    state = saved["state_dict"]
    lrcn_state = openvqa_to_lrcn(state)
    cfg = imported_config(model, state, data_root)
    source = cfg.data.word_vocab  # openvqa | mcan-vqa
    word_vocab = build_word_vocab(cfg.data, None)
    answer_vocab = read_answer_dict(answer_dict)
    words, answers = state["embedding.weight"].shape[0], state["proj.weight"].shape[0]
    if len(word_vocab) != words:
        raise LrcnError(f"the question files under {data_root} give {len(word_vocab)} words "
                        f"(with {'PAD, UNK' if source == 'mcan-vqa' else 'PAD, UNK, CLS'}), the checkpoint's "
                        f"embedding has {words}: the model was trained on other question files")
    if len(answer_vocab) != answers:
        raise LrcnError(f"{answer_dict} has {len(answer_vocab)} answers, the checkpoint's "
                        f"classifier (proj.weight) {answers}")
    net = create_model(cfg.model, len(word_vocab), len(answer_vocab))
    mismatch = weight_mismatch(net.state_dict(), lrcn_state)
    if mismatch:
        raise LrcnError(f"{checkpoint}: tensors do not fit {model}: {mismatch}")
    net.load_state_dict(lrcn_state)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_config(cfg, staging / "config.yaml")
        epoch = saved["epoch"] if isinstance(saved["epoch"], int) and saved["epoch"] >= 0 else 0
        save_checkpoint(staging / CHECKPOINTS / BEST, Checkpoint(
            cfg, word_vocab, answer_vocab, net.state_dict(), epoch,
            {"imported_from": str(checkpoint.resolve()), "source": source}))
        commit_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    parameters = sum(p.numel() for p in net.parameters())  # the word embedding included
    log.info("imported %s (%s, %d tensors) into %s: %d words, %d answers, %.2f M parameters",
             checkpoint, source, len(state), out,
             len(word_vocab), len(answer_vocab), parameters / 1e6)
    return {"run_dir": str(out), "vocab_size": len(word_vocab),
            "num_answers": len(answer_vocab), "parameters": parameters}

