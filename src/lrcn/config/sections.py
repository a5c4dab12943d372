"""The run configuration's three sections, each choice and each rule stated once.

A field's metadata (`option`) holds what the rest of lrcn derives from it: its CLI flag and
help (``lrcn train`` builds its flags from them), its choices and least value (checked by the
section's ``validate``), and whether a resumed run may change it (``lrcn train --resume``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from typing import Any

from lrcn.errors import LrcnError

# The sets of choices, defined here once; the models, the losses and the CLI import them.
TASKS = ("answer", "answerable", "both")
VARIANTS = ("ed", "st", "cst")
LRM_PLACEMENTS = ("none", "sa", "ga", "both")
GRID_REDUCTIONS = ("none", "conv", "avgpool")
POSITIONS = ("none", "coords", "sincos", "both")
ANSWER_LOSSES = ("bce", "ce")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("cpu", "cuda")
NORMS = ("torch", "openvqa")
WORD_VOCABS = ("train", "openvqa", "mcan-vqa")
NO_KEY_RULES = ("zero", "uniform")


def option(default: Any = MISSING, *, default_factory: Any = MISSING, flag: str | None = None,
           help: str = "", choices: tuple[str, ...] | None = None,
           minimum: float | None = None, resumable: bool = False,
           movable: bool = False) -> Any:
    """A config field and what is derived from it.

    Args:
        flag: its ``lrcn train`` flag (``--epochs``); None: only ``--set section.key=value``.
        help: the flag's help.
        choices: the values it may take.
        minimum: its least value (None values pass: the field is then optional).
        resumable: ``lrcn train --resume`` may change it (it changes neither what is computed
            nor the data).
        movable: a resumed run may point it elsewhere, as long as it stays set or unset (where
            the data lies).
    """
    metadata = {"flag": flag, "help": help, "choices": choices, "minimum": minimum,
                "resumable": resumable, "movable": movable}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def check_fields(section: Any, name: str) -> None:
    """Refuse a value outside its field's choices or below its minimum, naming the field."""
    for f in dataclasses.fields(section):
        value, meta = getattr(section, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise LrcnError(f"{name}.{f.name} must be one of {', '.join(meta['choices'])}, "
                            f"got {value!r}")
        least = meta.get("minimum")
        if least is not None and value is not None and value < least:
            bound = "0 or more" if least == 0 else f"at least {least:g}"
            optional = " (or null)" if f.default is None else ""
            raise LrcnError(f"{name}.{f.name} must be {bound}{optional}, got {value!r}")


@dataclass
class DataConfig:
    dataset: str = option("easyvqa", flag="--dataset", help="dataset name (lrcn.data registry)")
    data_root: str | None = option(None, flag="--data-root", movable=True,
                                   help="dataset folder in its official layout")
    train_split: str = option("train", flag="--train-split", help="split to train on; join "
                              "several with '+', e.g. train2014+val2014+vg")
    val_split: str | None = option("test", flag="--val-split", help="split to evaluate on "
                                   "after every epoch ('none': no evaluation)")
    features: list[str] = option(default_factory=list, flag="--features", movable=True,
                                 help="feature stores to read image grids from (lrcn features "
                                 "import/extract); sets model.image_encoder: features")
    train_limit: int | None = option(None, minimum=1)  # only the first N training questions
    val_limit: int | None = option(None, minimum=1)    # only the first N validation questions
    # m in the paper: questions are truncated/padded to this many words; None: to the longest
    # training question (openvqa's rule for CLEVR), fixed when a run starts and kept in its
    # config. Batches are trimmed to their longest question, so a loose bound costs nothing.
    max_question_tokens: int | None = option(14, minimum=1)
    min_word_count: int = option(1, minimum=1)  # words seen fewer times in training -> <unk>
    # The question words and their indices: train (the training questions' words seen at
    # least min_word_count times, most frequent first), or openvqa / mcan-vqa (that code
    # base's vocabulary, rebuilt from the VQA-v2 and VG question files under data_root:
    # data/openvqa.py; what lrcn import openvqa records).
    word_vocab: str = option("train", choices=WORD_VOCABS)
    answer_vocab_splits: str | None = None  # splits whose answers make the vocabulary; None: train_split
    answer_min_count: int = option(1, minimum=1)  # answers seen fewer times are dropped (9: "more than 8")
    answer_max_size: int | None = option(None, minimum=1)  # keep at most this many most frequent answers
    glove: str | None = option(None, flag="--glove", movable=True,
                               help="GloVe text file for the word embeddings (learned when unset)")
    image_size: int = option(64, minimum=1)  # images are resized to image_size x image_size
    # Decode every image once and keep the pixels in memory, unless they would take more
    # than image_cache_gb; then decode per batch.
    cache_images: bool = option(True, resumable=True)
    image_cache_gb: float = option(4.0, minimum=0, resumable=True)
    skip_invalid: bool = option(False, flag="--skip-invalid", help="drop questions whose image "
                                "is missing or unreadable (counted and listed)")

    def validate(self) -> None:
        check_fields(self, "data")


@dataclass
class ModelConfig:
    arch: str = option("lrcn", flag="--model", help="model (lrcn.models registry)")
    task: str = option("answer", flag="--task", choices=TASKS, help="train answer prediction, "
                       "answerability (VizWiz), or both")
    variant: str = option("ed", flag="--variant", choices=VARIANTS, help="LRCN stacking: "
                          "encoder-decoder, pure stacking, co-stacking")
    layers: int = option(6, flag="--layers", minimum=1, help="number of layers L")
    lrm: str = option("sa", flag="--lrm", choices=LRM_PLACEMENTS,
                      help="layer-residual placement")
    cst_question_lrm: bool = True     # CSt question guided block's layer-residual path (off with lrm none)
    d_model: int = option(512, minimum=1)      # D
    heads: int = option(8, minimum=1)          # h; head size is d_model // heads
    ffn_dim: int = option(2048, minimum=1)     # FFN hidden size
    dropout: float = option(0.1, minimum=0)    # below 1 (validate)
    word_dim: int = option(300, minimum=1)     # word-embedding size (300 for GloVe)
    pool_hidden: int = option(512, minimum=1)  # hidden size of the attention-pooling MLP
    fused_dim: int = option(1024, minimum=1)   # width of the fused vector z
    grid_reduction: str = option("none", choices=GRID_REDUCTIONS)  # 16x16 -> 8x8 reduction
    image_encoder: str = "small_cnn"  # small_cnn | features (precomputed) | a torchvision trunk name
    encoder_channels: int = option(64, minimum=1)  # width of the small CNN's grid
    encoder_weights: str | None = None  # state-dict file for a torchvision trunk
    freeze_encoder: bool = True       # torchvision trunks only; the small CNN always trains
    feature_channels: int = option(2048, minimum=1)  # C of precomputed grids (image_encoder: features)
    position: str = option("none", choices=POSITIONS)  # where each grid cell is (models/position.py)
    distance_bias: bool = False       # LRCN: image self-attention heads biased by cell distance (models/position.py)
    answerable_hidden: int = option(0, minimum=0)  # answerability head: 0 linear; N > 0 an MLP of N hidden units
    fast_cpu: bool = True             # the CPU speed layer (one-pass numba dropout); False: plain PyTorch layers
    # The formula of every layer norm of LRCN (models/layers.py): torch (biased variance,
    # eps 1e-5 inside the square root) or openvqa (MCAN's: unbiased standard deviation plus
    # eps 1e-6), for weights trained with openvqa / mcan-vqa (lrcn import openvqa).
    norm: str = option("torch", choices=NORMS)
    # Mask every image region whose features are all zero, as openvqa does for its padded
    # region lists; off: only a feature store's mask.npy masks regions.
    mask_zero_rows: bool = False
    # What attention and pooling give a query whose keys are all masked: zero (a zero context
    # vector) or uniform (the mean over all keys, openvqa's result of its -1e9 masking).
    no_key_attention: str = option("zero", choices=NO_KEY_RULES)

    def validate(self) -> None:
        check_fields(self, "model")
        if not self.dropout < 1.0:
            raise LrcnError(f"model.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class TrainConfig:
    epochs: int = option(13, flag="--epochs", minimum=1, resumable=True,
                         help="epochs to train (clears train.samples)")
    # Train on about this many samples in all, whatever the dataset's size: a sample is a
    # training question or a pass of an image through the image encoder (once per group of
    # an image's questions and epoch with group_by_image, else once per question). Epochs
    # become round(samples / samples per epoch) (at least 1), with the schedule stated for
    # `epochs` rescaled to them (config/schedule.py). None: train `epochs` epochs. --epochs
    # clears it.
    samples: int | None = option(None, minimum=1, resumable=True)
    batch_size: int = option(64, flag="--batch-size", minimum=1, help="questions per "
                             "optimizer step, over all processes and micro-batches")
    lr: float = option(1e-4, flag="--lr", help="base learning rate")
    warmup_epochs: int = option(3, minimum=0)  # lr = base * min(1, (epoch + 1) / (warmup_epochs + 1))
    decay_epochs: list[int] = field(default_factory=lambda: [10, 12])
    # A warm-up by optimizer step for runs of a few epochs: the lr also rises linearly over the
    # first N steps of the run, lr x min(1, (step + 1) / N) (config/schedule.py); 0: none.
    warmup_steps: int = option(0, minimum=0)
    decay_rate: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    grad_clip: float | None = None    # max gradient norm; None disables clipping
    answer_loss: str = option("bce", flag="--answer-loss", choices=ANSWER_LOSSES,
                              help="bce: soft scores over all answers; ce: the most common answer")
    answerable_weight: float = 1.0    # weight of the answerability loss with model.task both
    seed: int = option(0, flag="--seed", help="seed of the weights, data order and dropout")
    init: str | None = option(None, flag="--init", movable=True,
                              help="start from the weights of this run folder or checkpoint "
                              "(its vocabularies and config too; a new optimiser, the schedule "
                              "from epoch 0); flags change the config")
    device: str = option("cpu", flag="--device", choices=DEVICES, resumable=True,
                         help="where to train")
    num_workers: int = option(0, flag="--workers", minimum=0, resumable=True,
                              help="DataLoader worker processes per training process")
    # Page-locked batches, faster copies to the GPU; None: on with cuda.
    pin_memory: bool | None = option(None, resumable=True)
    # Gradient accumulation: each optimizer step's batch_size questions are split into this many
    # micro-batches, forwarded and backwarded one after another (less memory), then one step.
    # The loss is a sum over questions, so the gradient is exactly the whole batch's.
    # batch_size must be divisible by accumulate x the number of processes (torchrun).
    accumulate: int = option(1, flag="--accumulate", minimum=1, resumable=True,
                             help="gradient accumulation: split each step's batch into N "
                             "micro-batches (less memory, the same gradient: the loss is a sum); "
                             "the batch size must be divisible by N x processes")
    precision: str = option("fp32", flag="--precision", choices=PRECISIONS,
                            help="bf16: bfloat16 autocast of the forward pass and loss (weights "
                            "stay fp32; needs a GPU or CPU with bfloat16 support)")
    compile: bool = option(False, flag="--compile", resumable=True,
                           help="torch.compile the training forward pass (evaluation and "
                           "checkpoints: eager)")
    eval_batch_size: int = option(256, minimum=1, resumable=True)  # per evaluation batch, per process
    group_by_image: bool = False      # an image's questions together in batches (one encoder pass)
    # With group_by_image: an image's questions come in groups of at most this many, each
    # group in a batch (data/batches.py grouped_order); None: all of them in one group.
    image_group_size: int | None = option(None, minimum=1)
    # Optimizer steps between saves of checkpoints/last within an epoch (counted from its
    # start; every epoch end saves too); 0: epoch ends only. last always holds all that
    # `lrcn train --resume RUN` needs. A paper-size last (0.9 GB) takes seconds to write:
    # about 1% of 1000 steps on a GPU.
    checkpoint_every: int = option(1000, minimum=0, resumable=True)
    # Loss and lr per optimizer step, validation metrics per epoch, the config as hyperparameters
    # (engine/tensorboard.py); rank 0 writes them.
    tensorboard: bool = option(True, flag="--tensorboard", resumable=True,
                               help="write TensorBoard event files to RUN/tb/ (--no-tensorboard: "
                               "none)")
    # Stop (with a checkpoint) after this many non-finite losses in a row; 0: never.
    max_bad_steps: int = option(10, minimum=0, resumable=True)
    # Linux/glibc: keep freed memory in the process instead of returning it to the kernel
    # (engine/memory.py): +15% samples/s for the paper-size model on a CPU, at the cost of
    # holding the peak heap for the process's life. Opt-in: it changes the whole process.
    keep_freed_memory: bool = option(False, resumable=True)

    def validate(self, resume: bool = False) -> None:
        """Ranges and choices; a run that starts also needs its schedule to fit its epochs (a
        `resume`d run keeps its saved schedule as it is)."""
        check_fields(self, "train")
        if resume:
            return
        if self.warmup_epochs >= self.epochs:
            raise LrcnError(f"train.warmup_epochs {self.warmup_epochs} must be less than "
                            f"train.epochs {self.epochs}: the run would end before its learning "
                            "rate reaches train.lr")
        late = [e for e in self.decay_epochs if e >= self.epochs]
        if late:
            raise LrcnError(f"train.decay_epochs {self.decay_epochs}: decay epoch(s) {late} never "
                            f"take effect in a run of {self.epochs} epochs (decay epoch e lowers "
                            "the lr from the (e+1)-th epoch on); set them below train.epochs or "
                            "remove them")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, resume: bool = False) -> None:
        """Check every section (each states its own rules)."""
        self.data.validate()
        self.model.validate()
        self.train.validate(resume)


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))  # data, model, train


def resumable_fields() -> tuple[list[str], list[str]]:
    """(``section.key`` a resumed run may change, those it may move), from the fields."""
    resumable, movable = [], []
    for section in dataclasses.fields(RunConfig):
        for f in dataclasses.fields(section.default_factory):
            if f.metadata.get("resumable"):
                resumable.append(f"{section.name}.{f.name}")
            if f.metadata.get("movable"):
                movable.append(f"{section.name}.{f.name}")
    return resumable, movable


def flag_fields() -> list[tuple[str, dataclasses.Field]]:
    """(section, field) of every field with a CLI flag, in section and field order."""
    return [(section.name, f) for section in dataclasses.fields(RunConfig)
            for f in dataclasses.fields(section.default_factory) if f.metadata.get("flag")]
