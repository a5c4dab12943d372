"""``lrcn export --format hf``: a trained model as a model folder for the Hugging Face Hub.

The folder holds the checkpoint's own files (`lrcn.engine.checkpoint`: model.safetensors,
config.json, word_vocab.json, answer_vocab.json; no resume.pt, so no pickle) and a model card,
README.md, with the Hub's metadata. It is self-contained: a torchvision trunk's weights are
in the state dict, and every checkpoint is rebuilt without ``model.encoder_weights``
(`lrcn.engine.inference.load_model`). Every ``--checkpoint`` and `lrcn.from_pretrained` take
it. It appears whole or not at all (`lrcn.fileio.building_folder`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from lrcn.config import RunConfig, config_to_dict
from lrcn.data.registry import dataset_metric
from lrcn.engine.checkpoint import Checkpoint, resolve_checkpoint, write_checkpoint_files
from lrcn.engine.inference import load_model
from lrcn.errors import LrcnError
from lrcn.evaluation import EVALUATORS
from lrcn.fileio import building_folder
from lrcn.models import VQAModel

log = logging.getLogger(__name__)

CARD = "README.md"
TASK = "visual-question-answering"  # the Hub's task id
VARIANTS = {"ed": "encoder-decoder stacking (LRCN-ED)", "st": "pure stacking (LRCN-St)",
            "cst": "co-stacking (LRCN-CSt)"}
LRMS = {"none": "no layer-residual mechanism (MCAN's layers)",
        "sa": "the layer-residual mechanism on the self-attention",
        "ga": "the layer-residual mechanism on the guided attention",
        "both": "the layer-residual mechanism on the self- and guided attention"}
BASELINES = {"cnn_lstm": "the late-fusion CNN+LSTM baseline (VizWiz report)",
             "text_only": "a question-only baseline (it never looks at the image)",
             "image_only": "an image-only baseline (it never reads the question)"}


def export_hf(checkpoint: str | Path, out: str | Path,
              push_to_hub: str | None = None) -> dict[str, Any]:
    """Write the model folder `out` (which must not exist) from `checkpoint` (a run folder,
    checkpoint folder or ``.pt`` file); with `push_to_hub`, upload it to that Hub repository.
    The summary ``lrcn export --json`` prints."""
    out = Path(out)
    if out.exists():
        raise LrcnError(f"{out} already exists; choose another --out or delete it first")
    path = resolve_checkpoint(checkpoint)
    loaded = load_model(path)  # the weights must rebuild the model their config describes
    ckpt = dataclasses.replace(loaded.checkpoint, optimizer_state=None, progress=None)
    card = model_card(ckpt, loaded.model, out.name, push_to_hub)
    try:
        with building_folder(out) as staging:
            files = write_checkpoint_files(staging, ckpt)
            (staging / CARD).write_text(card, encoding="utf-8")
    except FileExistsError:
        raise LrcnError(f"{out} already exists (created while exporting); choose another "
                        "--out") from None
    log.info("exported %s to %s", path, out)
    summary = {"format": "hf", "out": str(out), "files": sorted([*files, CARD]),
               "parameters": loaded.model.num_parameters(), "metrics": card_metrics(ckpt)}
    if push_to_hub:
        summary["hub"] = push_folder(out, push_to_hub)
    return summary


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (created if need be, with the
    token of ``huggingface-cli login`` or ``HF_TOKEN``); its address."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise LrcnError("--push-to-hub needs the huggingface_hub package: pip install "
                        f"'lrcn[hub]' (the model folder {folder} is written)") from None
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="lrcn export --format hf")
    except Exception as exc:  # noqa: BLE001 - network, login, permissions: the Hub's words
        detail = str(exc).strip().splitlines()
        raise LrcnError(f"--push-to-hub {repo_id}: uploading {folder} failed: "
                        f"{type(exc).__name__}{': ' + detail[0] if detail else ''}") from None
    log.info("uploaded %s to %s", folder, url)
    return str(url)


# --------------------------------------------------------------------------- the card

def card_metrics(ckpt: Checkpoint) -> dict[str, Any]:
    """The checkpoint's validation metrics: the split and epoch (1-based) they were measured
    at, overall accuracy, per answer type, answerability; {} when it records none."""
    val = ckpt.metrics.get("val") if isinstance(ckpt.metrics, dict) else None
    if not isinstance(val, dict) or not val:
        return {}
    kept = {key: val[key] for key in ("overall", "per_answer_type", "answerability",
                                      "num_questions") if key in val}
    return {"split": ckpt.config.data.val_split, "epoch": ckpt.epoch + 1, **kept}


def model_card(ckpt: Checkpoint, model: VQAModel, folder: str,
               repo_id: str | None = None) -> str:
    """README.md of the model folder named `folder` (to be uploaded to `repo_id`): the Hub's
    YAML metadata, then what the model is, what it was trained on, its metrics, how to use
    it, and its exact config."""
    metrics, name = card_metrics(ckpt), repo_id or folder
    parts = [f"---\n{yaml.safe_dump(card_metadata(ckpt, name, metrics), sort_keys=False)}---",
             f"# {name}", _about(ckpt, model), _training(ckpt.config),
             _evaluation(ckpt, metrics), _usage(ckpt.config, folder, repo_id), _files(),
             "## Config\n\nThe run's resolved configuration, exactly (also in `config.json`):\n\n"
             f"```yaml\n{yaml.safe_dump(config_to_dict(ckpt.config), sort_keys=False)}```"]
    return "\n\n".join(parts) + "\n"


def card_metadata(ckpt: Checkpoint, name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The front matter of the Hub's model cards: library, task, tags, datasets, metrics and
    a ``model-index`` of the results (when the checkpoint records any)."""
    cfg = ckpt.config
    dataset, arch = cfg.data.dataset, _short_name(cfg)
    results = [{"type": "accuracy", "value": metrics["overall"],
                "name": f"{_accuracy_name(dataset)} (overall)"}] if "overall" in metrics else []
    results += [{"type": "accuracy", "value": value, "name": f"{_accuracy_name(dataset)} ({kind})"}
                for kind, value in metrics.get("per_answer_type", {}).items()]
    results += [{"type": key, "value": value, "name": f"answerability {label}"}
                for key, label in (("average_precision", "AP"), ("f1", "F1"))
                for value in [metrics.get("answerability", {}).get(key)] if value is not None]
    meta: dict[str, Any] = {
        "library_name": "lrcn", "pipeline_tag": TASK,
        "tags": list(dict.fromkeys([TASK, "lrcn", arch, dataset])),
        "datasets": [dataset],
        "metrics": list(dict.fromkeys(r["type"] for r in results)) or ["accuracy"],
    }
    if results:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": TASK, "name": "Visual Question Answering"},
            "dataset": {"type": dataset, "name": dataset, "split": metrics["split"]},
            "metrics": results}]}]
    return meta


def _short_name(cfg: RunConfig) -> str:
    m = cfg.model
    return f"lrcn-{m.variant}" if m.arch == "lrcn" else m.arch


def _accuracy_name(dataset: str) -> str:
    try:
        return EVALUATORS[dataset_metric(dataset)].accuracy_name
    except LrcnError:  # a dataset this lrcn does not know
        return "accuracy"


def _about(ckpt: Checkpoint, model: VQAModel) -> str:
    m, d = ckpt.config.model, ckpt.config.data
    if m.arch == "lrcn":
        what = (f"An LRCN (Layer-Residual Co-Attention Network) for visual question answering: "
                f"{VARIANTS.get(m.variant, m.variant)} of L = {m.layers}, "
                f"{LRMS.get(m.lrm, m.lrm)}; D = {m.d_model}, {m.heads} heads, FFN {m.ffn_dim}.")
    else:
        what = f"A visual question answering model: {BASELINES.get(m.arch, m.arch)}."
    if m.image_encoder == "features":
        image = (f"It reads precomputed image features ({m.feature_channels} channels, from "
                 "feature stores written by `lrcn features`), not image files.")
    elif m.image_encoder == "small_cnn":
        image = (f"It reads images at {d.image_size}×{d.image_size} pixels through a small CNN "
                 "trained with it.")
    else:
        image = (f"It reads images at {d.image_size}×{d.image_size} pixels through a torchvision "
                 f"`{m.image_encoder}` trunk ({'frozen' if m.freeze_encoder else 'fine-tuned'}"
                 "), whose weights are in `model.safetensors` with the rest.")
    task = {"answer": "an answer", "answerable": "whether the question is answerable",
            "both": "an answer and whether the question is answerable"}.get(m.task, m.task)
    total = sum(p.numel() for p in model.parameters())
    return (f"{what} {image} It predicts {task}, among {len(ckpt.answer_vocab):,} answers, "
            f"from questions of up to {d.max_question_tokens} words over a vocabulary of "
            f"{len(ckpt.word_vocab):,}. Parameters: {model.num_parameters() / 1e6:.2f} M "
            f"without the word embeddings, {total / 1e6:.2f} M in all.\n\n"
            "Trained and exported (`lrcn export --format hf`) with lrcn.")


def _training(cfg: RunConfig) -> str:
    d, t = cfg.data, cfg.train
    lines = [f"* dataset `{d.dataset}`: trained on `{d.train_split}`"
             + (f" (its first {d.train_limit:,} questions)" if d.train_limit else "")
             + (f", validated on `{d.val_split}`" if d.val_split else ", without validation"),
             f"* answers: those of `{d.answer_vocab_splits or d.train_split}` given at least "
             f"{d.answer_min_count} time(s)",
             f"* {t.epochs} epoch(s) of {t.batch_size} questions a step, Adam at learning rate "
             f"{t.lr:g}, seed {t.seed}"]
    if t.init:
        lines.append(f"* started from the weights of `{t.init}`")
    return "## Training\n\n" + "\n".join(lines)


def _evaluation(ckpt: Checkpoint, metrics: dict[str, Any]) -> str:
    if not metrics:
        return ("## Evaluation\n\nThe checkpoint records no validation metrics (imported "
                "weights, or a run without a validation split): evaluate it with "
                "`lrcn evaluate`, below.")
    label = _accuracy_name(ckpt.config.data.dataset)
    lines = [f"On `{metrics['split']}`"
             + (f" ({metrics['num_questions']:,} questions)" if "num_questions" in metrics else "")
             + f", at epoch {metrics['epoch']} of {ckpt.config.train.epochs} (the checkpoint's "
             "weights), in percent:", ""]
    if "overall" in metrics:
        lines.append(f"* {label}: **{metrics['overall']:.2f}**")
    lines += [f"  * {kind}: {value:.2f}" for kind, value in metrics.get("per_answer_type", {}).items()]
    answerability = metrics.get("answerability", {})
    if answerability:
        lines.append(f"* answerability (unanswerable as the positive class): average precision "
                     f"{answerability['average_precision']:.2f}, F1 {answerability['f1']:.2f}")
    return "## Evaluation\n\n" + "\n".join(lines)


def _usage(cfg: RunConfig, folder: str, repo_id: str | None) -> str:
    d = cfg.data
    root = " --data-root DATA_ROOT" if d.data_root else ""
    split = d.val_split or d.train_split
    features = " --features STORE" if cfg.model.image_encoder == "features" else ""
    lines = ["## Use", ""]
    if repo_id:
        lines += ["Download it (`pip install 'lrcn[hub]'`):", "", "```python",
                  "from huggingface_hub import snapshot_download",
                  f'snapshot_download("{repo_id}", local_dir="{folder}")', "```", ""]
    lines += ["From the command line, the folder is a checkpoint like any other:", "", "```bash"]
    if cfg.model.image_encoder != "features":
        lines += [f'lrcn predict --checkpoint {folder} --image photo.jpg --question "What is it?"',
                  f"lrcn serve --checkpoint {folder}"]
    lines += [f"lrcn evaluate --checkpoint {folder} --split {split}{root}{features}", "```", "",
              "From Python:", "", "```python", "import lrcn", ""]
    from_images = cfg.model.image_encoder != "features"
    if from_images:
        lines[-2:-1] = ["from pathlib import Path", "", "import lrcn",
                        "from lrcn.engine.inference import answer_question"]
    lines.append(f'loaded = lrcn.from_pretrained("{folder}")  # .model (a torch module), '
                 ".word_vocab, .answer_vocab")
    if from_images:
        lines += ['prediction = answer_question(loaded, Path("photo.jpg"), "What is it?")',
                  "print(prediction.answers)  # [{'answer': ..., 'score': ...}, ...]"]
    return "\n".join([*lines, "```"])


def _files() -> str:
    return ("## Files\n\n"
            "* `model.safetensors`: the weights (safetensors: tensors only, no code runs on "
            "loading)\n"
            "* `config.json`: the run's resolved config (`data`, `model`, `train`) with the "
            "checkpoint's `epoch` and `metrics`\n"
            "* `word_vocab.json`, `answer_vocab.json`: the question words and the answers, in "
            "the order of the embedding rows and the answer logits")
