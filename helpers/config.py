"""One configuration object per run: presets (smoke / cpu / gpu), environment overrides, data discovery."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .discovery import find_data_root

ENV_PREFIX = "IMSUB_"
DATASET_DIRNAME = "ImageNet-Subset"


@dataclass
class Config:
    """Everything a run needs; build it with `get_config`, never by hand in a notebook."""

    preset: str = "cpu"
    data_root: Path | None = None  # the folder holding train-semi/, test/, ... (found if None)
    truth_root: Path | None = None  # hidden truth of the demo data (None for real data)
    data_source: str = ""  # how it was found: "setting", "kaggle", "colab", "drive", "local", "zip", "demo"
    extract_dir: Path | None = None  # where a dataset zip is extracted once (default data/extracted)
    # data
    image_size: int = 64  # 80 px split the seeds on butterfly10 (accuracy -1.4, mIoU +1.4 points): docs/real-photos.md
    val_per_class: int = 2
    demo_full: bool = False  # generate the full-size demo (50 x 10 + 5000 + 752) instead of the small one
    # model
    arch: str = "resnet18"
    small_stem: bool = False  # 3x3 stride-1 stem, no max-pool: finer features, ~13x the compute
    encoder_weights: Path | None = None  # optional local pretrained weights (only where rules allow)
    # classifier training
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adamw"  # "adamw" or "sgd" (SGD wants lr ~0.05-0.1, weight_decay ~5e-4)
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    ema_decay: float = 0.0  # 0 switches the weight EMA off
    grad_clip: float = 5.0
    crop_min_scale: float = 0.35  # the classifier's views: smallest random crop, a share of the image area (0.08 and 0.6 lost on real photos; the U-Net's stays 0.35)
    label_view: str = "weak"  # the labeled images' training view: "weak" (crop, flip, mild jitter) or "strong" (plus RandAugment and cutout)
    # pseudo-labeling / consistency
    pseudo_rounds: int = 1
    pseudo_epochs: int = 40
    pseudo_threshold: float = 0.8  # offline: the teacher's (flip-averaged) confidence needed to keep a pseudo-label (0.6 lost on tiny10 and nette10, tied on butterfly10)
    pseudo_max_per_class: int = 0  # > 0: at most this many pseudo-labels per class; 0: derived (pseudo_balance)
    pseudo_balance: float = 0.0  # > 0: cap = this x the mean share of the images above the threshold; 0: 2x N / C
    consistency_weight: float = 1.0  # weight of the FixMatch loss on unlabeled batches while retraining; 0: off (lost accuracy on real photos)
    consistency_threshold: str = "0.8"  # online (FixMatch): a probability, or "adaptive" (FreeMatch, per class)
    threshold_momentum: float = 0.99  # EMA memory of the adaptive thresholds (the paper's 0.999 suits 10^6 steps)
    unlabeled_ratio: int = 1  # unlabeled images per labeled image in a step (FixMatch's mu; the paper uses 7)
    weak_view: str = "crop"  # the unlabeled weak view: "crop" (as the supervised one) or "flip_translate" (FixMatch)
    distribution_alignment: bool = True  # ReMixMatch's alignment of the weak-view probabilities (off: a tie on tiny10, a loss on butterfly10 and nette10; docs/real-photos.md)
    ema_teacher: bool = False  # targets from the weight EMA's predictions (needs ema_decay > 0)
    # self-supervised pretraining (notebook 02, helpers.selfsup: SimCLR)
    init: str = "auto"  # where 03 and 04 start: "auto" (02's encoder only where 02's check finds it clearly better than random weights), "ssl" (02's encoder always), "scratch"
    ssl_epochs: int = 100
    ssl_image_size: int = 0  # side of the pretraining views; 0: image_size
    ssl_batch_size: int = 128  # images per step (2 views each); SimCLR wants large batches
    ssl_lr: float = 1e-3  # AdamW, warmup + cosine as for the classifier
    ssl_temperature: float = 0.2  # NT-Xent temperature
    ssl_min_scale: float = 0.08  # smallest crop area of a view (SimCLR: 0.08)
    # segmentation
    seg_epochs: int = 40
    seg_lr: float = 2e-3
    seg_consistency_weight: float = 0.0  # > 0: the U-Net also learns from unlabeled images (dense consistency); off: it tied or lost on real photos (README)
    seg_consistency_threshold: float = 0.95  # confidence a pixel's weak-view guess needs to become a target
    mask_method: str = "fusion"  # the shipped masks (helpers.mask_prediction.METHODS; "fusion" beat "fg+class" in 6 of 6 paired real-photo runs, docs/real-photos.md); its validation mIoU picks the U-Net
    # run
    side_runs: bool = True  # the notebooks' comparisons no later step uses (01's classifier without augmentation); `python -m helpers run` skips them
    select_best_epoch: bool = False  # False: the last weights (the EMA's if ema_decay > 0), which beat the best epoch on real photos (README); True: the epoch with the best validation score
    final_fit: bool = False  # 05 trains the chosen classifier and U-Net again on all labeled images (on in the cpu and gpu presets)
    final_fit_fraction: float = 1.0  # 1: the final fit retrains from the start; < 1: it continues the chosen models for that share of their epochs, at that share of the lr
    seed: int = 0
    # 0: the resume state after every epoch; > 0: at most that often, and always before the unsaved
    # training would exceed it (so a kill loses at most this much), and after the last epoch
    checkpoint_seconds: float = 0.0
    device: str = ""  # "" picks cuda, then mps, then cpu
    amp: bool = True  # mixed precision on CUDA (bf16 on Ampere+, else fp16)
    channels_last: bool = True  # channels_last memory format on CUDA
    cpu_bf16: bool = False  # bf16 autocast + channels_last on CPUs with bf16 instructions: faster, less accurate
    num_threads: int = 0  # torch CPU threads; 0 leaves torch's default
    tensorboard: str = "auto"  # TensorBoard event files under run_dir/tensorboard: "auto" (if installed), "on", "off"
    wandb_project: str = ""  # a Weights & Biases project to log to; "" (default): wandb is never imported
    cache_dir: Path | None = None
    run_dir: Path | None = None  # checkpoints and records (default <runs_dir>/<dataset_tag>/<preset>, "-scratch" added with init "scratch")
    runs_dir: Path | None = None  # the folder of the run folders (default <repo>/runs; `python -m helpers run --out D`: D/runs)
    # A persistent folder (Drive, /kaggle/working) the checkpoints and records are copied to, and
    # restored from in a new session. $IMSUB_MIRROR_DIR / get_config(mirror_dir=...) name its base:
    # get_config appends <dataset_tag>/<preset>. None: everything stays on this machine's disk.
    mirror_dir: Path | None = None
    dataset_tag: str = ""  # the data's name + a hash of its annotation file: one run folder per dataset
    submission_dir: Path | None = None
    notes: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A short human-readable listing of the settings that matter, and where the checkpoints go."""
        keys = ["preset", "data_source", "data_root", "device", "image_size", "arch", "small_stem",
                "init", "epochs", "pseudo_epochs", "seg_epochs", "batch_size", "lr", "seed", "cache_dir",
                "submission_dir", "run_dir"]
        lines = [f"{k:>14}: {getattr(self, k)}" for k in keys]
        every = (f"at most every {self.checkpoint_seconds:g} s" if self.checkpoint_seconds > 0
                 else "after every epoch")
        lines.append(f"{'checkpoints':>14}: best weights when they improve, resume state {every} "
                     "and after the last epoch")
        lines.append(f"{'mirror_dir':>14}: " + (str(self.mirror_dir) if self.mirror_dir else
                     "none: checkpoints stay on this machine (IMSUB_MIRROR_DIR copies them to Drive "
                     "or /kaggle/working)"))
        return "\n".join(lines)


PRESETS: dict[str, dict] = {
    # seconds: used by the tests (pytest --nbval), tiny images and a couple of epochs
    "smoke": dict(image_size=32, epochs=2, pseudo_epochs=2, seg_epochs=2, batch_size=32,
                  warmup_epochs=0, ssl_epochs=2, ssl_image_size=24, ssl_batch_size=32,
                  final_fit=True, final_fit_fraction=0.5),  # the cpu preset's path, so that the tests take it
    # minutes on a 2-core laptop CPU: a real run on the demo data (`make run`)
    "cpu": dict(image_size=64, epochs=100, pseudo_epochs=60, seg_epochs=100, batch_size=32,
                checkpoint_seconds=115.0, ssl_epochs=30, ssl_image_size=48, ssl_batch_size=64,
                # epochs 150 / pseudo_epochs 100 won 3.6 accuracy points on tiny10 and butterfly10 (1.3 on nette10)
                # but made `make run` 1.33x as long (about 17 min on the slower 2-core machine, over 15): an option
                # seg_epochs 100, not 60: better test mIoU in 5 of 6 paired real-photo runs (docs/real-photos.md), make run x1.16
                # real photos (docs/real-photos.md): the final fit won every seed on tiny10 and butterfly10;
                # continuing for half the epochs (a quarter lost on both sets) keeps `make run` under 15 min (a retrain: 18 min)
                final_fit=True, final_fit_fraction=0.5),
    # a Colab T4 / Kaggle GPU: the full run on the real data (not yet timed on a GPU)
    "gpu": dict(image_size=160, epochs=150, pseudo_epochs=100, seg_epochs=100, batch_size=64,
                checkpoint_seconds=110.0, ssl_epochs=200, ssl_batch_size=256,  # no weight EMA: it lost on real photos (docs/real-photos.md)
                final_fit=True),  # the retrain: on real photos it beat continuing by 0.7 (tiny10) and 4.5 (butterfly10) accuracy points
}


def project_root() -> Path:
    """The repository root: $IMSUB_ROOT, else the first parent of the working directory with helpers/."""
    env = os.environ.get(ENV_PREFIX + "ROOT")
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "helpers" / "__init__.py").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return cwd


def pick_device(requested: str = "") -> str:
    """The requested device, else CUDA, else Apple MPS, else CPU."""
    import torch

    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def demo_dir(root: Path | None = None) -> Path:
    """Where the generated demo data lives."""
    return (root or project_root()) / "data" / "demo"


def dataset_tag(data_root: str | os.PathLike, demo: bool = False) -> str:
    """A folder name per dataset: its name and a hash of its annotation file (of its path if unreadable).

    The same data gets the same tag wherever it sits (Drive, /content, /kaggle/input), so a new
    session finds its checkpoints; the demo and the real data never share one.
    """
    root = Path(data_root)
    name = root.parent.name if demo or (root.parent / "demo_info.json").is_file() else root.name
    try:
        digest = hashlib.sha1((root / "train_semi_annotations_with_seg_ids.json").read_bytes())
    except OSError:
        digest = hashlib.sha1(str(root.resolve()).encode())
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name).strip('-.')[:40] or 'data'}-{digest.hexdigest()[:8]}"


def _coerce(value: str, current, name: str):
    """Turn an environment string into the type of the field it overrides."""
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={value!r}: expected true/false")
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    return value


_PATH_FIELDS = {"data_root", "truth_root", "extract_dir", "cache_dir", "run_dir", "runs_dir", "mirror_dir", "submission_dir", "encoder_weights"}


def get_config(preset: str | None = None, *, prepare_data: bool = True, **overrides) -> Config:
    """Build the run's Config: preset defaults < IMSUB_* environment variables < keyword overrides.

    The preset comes from the argument, else $IMSUB_PRESET, else "gpu" with CUDA and "cpu" without.
    With no data found, the demo data is generated (once) and used (`prepare_data=False` skips that).
    """
    import torch

    preset = preset or os.environ.get(ENV_PREFIX + "PRESET") or ("gpu" if torch.cuda.is_available() else "cpu")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**dataclasses.asdict(Config()), **PRESETS[preset], "preset": preset}
    names = {f.name for f in dataclasses.fields(Config)} - {"notes", "preset"}
    for name in names:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None and env != "":
            values[name] = Path(env) if name in _PATH_FIELDS else _coerce(env, values[name], name)
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}; known: {sorted(names)}")
    values.update(overrides)
    cfg = Config(**values)

    root = project_root()
    cfg.device = pick_device(cfg.device)
    cfg.cache_dir = Path(cfg.cache_dir or root / "cache")
    data_root, source = find_data_root(cfg.data_root, root, cfg.extract_dir)
    if data_root is None:
        data_root, cfg.truth_root = _demo_paths(root, cfg.demo_full, prepare_data)
    cfg.data_root, cfg.data_source = data_root, source
    if cfg.truth_root is None and (data_root.parent / "demo_info.json").is_file():
        cfg.truth_root = data_root.parent / "truth"  # a demo dataset given explicitly keeps its truth
    cfg.dataset_tag = cfg.dataset_tag or dataset_tag(data_root, demo=source == "demo")
    cfg.runs_dir = Path(cfg.runs_dir or root / "runs")
    cfg.run_dir = Path(cfg.run_dir or cfg.runs_dir / cfg.dataset_tag / run_folder_name(preset, cfg.init))
    cfg.submission_dir = Path(cfg.submission_dir or (root / "submission" if preset != "smoke"
                                                     else cfg.run_dir / "submission"))
    if cfg.mirror_dir:
        base = Path(cfg.mirror_dir).expanduser()
        if not base.parent.is_dir():
            raise FileNotFoundError(
                f"IMSUB_MIRROR_DIR={base}: its parent folder {base.parent} does not exist. On Colab, "
                "mount Drive first (drive.mount('/content/drive')); else point it at an existing folder")
        cfg.mirror_dir = base / cfg.dataset_tag / preset
        _restore(cfg.run_dir, cfg.mirror_dir)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return cfg


DEFAULT_INIT = "auto"


def run_folder_name(preset: str, init: str) -> str:
    """The run folder's name: the preset, plus the start when it is not the default ("cpu", "cpu-ssl").

    Runs that start from another encoder choose other teachers and classifiers, so they get their own
    folder: switching IMSUB_INIT never meets the checkpoints of the other start. The default start
    ("auto") keeps the plain preset name.
    """
    init = str(init).strip().lower()
    return preset if init in ("", DEFAULT_INIT) else f"{preset}-{init}"


def _restore(run_dir: Path, mirror_dir: Path) -> None:
    """A new session: copy the best weights and records the mirror holds and this machine lacks."""
    from .checkpoints import restore_missing

    copied = restore_missing(run_dir, mirror_dir)
    if copied:
        size = sum(p.stat().st_size for p in copied) / 2**20
        print(f"restored {len(copied)} files ({size:.0f} MB) from {mirror_dir} into {run_dir}: "
              + ", ".join(p.name for p in copied))


def _demo_paths(root: Path, full: bool, prepare: bool) -> tuple[Path, Path]:
    out = demo_dir(root) if not full else demo_dir(root).with_name("demo-full")
    if not prepare:
        return out / DATASET_DIRNAME, out / "truth"
    from .demo import ensure_demo

    return Path(ensure_demo(out, full=full)), out / "truth"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that a run can be repeated."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
