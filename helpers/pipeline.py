"""The steps of a run, shared by the notebooks and `python -m helpers run`: data, models, choices."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cache import CachedImages, load_cached
from .checkpoints import STATE_SUFFIX, load_checkpoint, mirror_file
from .config import Config
from .data import DatasetIndex, Sample, load_index, split_labeled
from .models import build_classifier, classifier_from_spec, model_spec
from .tracking import history_path, read_history
from .transfer import load_encoder_weights

BASELINE_RUN = "classifier_baseline"
SSL_CLASSIFIER_RUN = "classifier_ssl"  # notebook 02: notebook 01's recipe, started from the pretrained encoder
SUMMARY_FILE = "summary.json"


@dataclass
class RunData:
    """The index plus the decoded caches of every split a run uses (labeled splits carry masks)."""

    index: DatasetIndex
    train: CachedImages
    val: CachedImages
    unlabeled: CachedImages | None = None
    test: CachedImages | None = None

    def summary(self) -> str:
        """Counts per split."""
        parts = [f"train {len(self.train)}", f"val {len(self.val)}"]
        if self.unlabeled is not None:
            parts.append(f"unlabeled {len(self.unlabeled)}")
        if self.test is not None:
            parts.append(f"test {len(self.test)}")
        return ", ".join(parts) + f" images at {self.train.images.shape[-1]} px, {self.index.num_classes} classes"


def dataset_cache_dir(cfg: Config) -> Path:
    """One cache folder per dataset, so the demo and the real data never evict each other."""
    root = Path(cfg.data_root).resolve()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    return Path(cfg.cache_dir) / f"{root.parent.name or 'data'}-{tag}"


def load_run_data(cfg: Config, *, unlabeled: bool = True, test: bool = False, progress: bool = True,
                  index: DatasetIndex | None = None) -> RunData:
    """Index the data, split the labeled images by seed, and load (building once) the decoded caches."""
    index = index or load_index(cfg.data_root)
    folder = dataset_cache_dir(cfg)
    size, k = cfg.image_size, index.num_classes
    labeled = load_cached(index.labeled, size, folder, "labeled", k, with_masks=True, progress=progress)
    train_samples, val_samples = split_labeled(index.labeled, cfg.val_per_class, cfg.seed)
    position = {key: i for i, key in enumerate(labeled.keys)}
    data = RunData(index=index, train=labeled.subset([position[s.key] for s in train_samples]),
                   val=labeled.subset([position[s.key] for s in val_samples]))
    if unlabeled and index.unlabeled:
        data.unlabeled = load_cached(index.unlabeled, size, folder, "unlabeled", k, progress=progress,
                                     skip_broken=True)
        if data.unlabeled.skipped:
            print(f"skipped {len(data.unlabeled.skipped)} unreadable unlabeled files")
    if test and index.test:
        data.test = load_cached(index.test, size, folder, "test", k, progress=progress)
    return data


def val_samples(cfg: Config, index: DatasetIndex) -> list[Sample]:
    """The validation samples of this config's split (to score masks at their original size)."""
    return split_labeled(index.labeled, cfg.val_per_class, cfg.seed)[1]


def new_classifier(cfg: Config, index: DatasetIndex, encoder_from: str | os.PathLike | None = None) -> nn.Module:
    """A fresh classifier for this config and data, its spec attached (optionally with local weights).

    encoder_from: a weight file or checkpoint whose ResNet trunk starts the classifier (e.g.
    selfsup.start_encoder(cfg), notebook 02's encoder); else cfg.encoder_weights if set. The fc
    layer stays random; a file that does not fit raises an error naming it.
    """
    model = build_classifier(cfg.arch, index.num_classes, small_stem=cfg.small_stem)
    model.spec = model_spec(cfg.arch, index.num_classes, cfg.small_stem, cfg.image_size, index.class_names)
    source = encoder_from or cfg.encoder_weights
    if source:
        report = load_encoder_weights(model, source)
        model.start_digest = report.digest  # recorded by the training: a changed start is a new training
        print(f"loaded {report.loaded} tensors from {source}")
    return model


def checkpoint_path(cfg: Config, run_name: str) -> Path:
    """Where `fit(..., run_name=...)` keeps this run's checkpoint."""
    return Path(cfg.run_dir) / f"{run_name}.pt"


def training_history(cfg: Config, run_name: str) -> list[dict]:
    """The per-epoch history of a training run: its `<run>.history.csv` (helpers.tracking), else its checkpoint."""
    csv_path = history_path(cfg.run_dir, run_name)
    if csv_path.is_file():
        return read_history(csv_path)
    state = Path(cfg.run_dir) / f"{run_name}{STATE_SUFFIX}"
    path = state if state.is_file() else checkpoint_path(cfg, run_name)
    return list(load_checkpoint(path).get("history", []))


def load_classifier(cfg: Config, run_name: str, num_classes: int | None = None) -> nn.Module:
    """Rebuild a classifier from its checkpoint (best weights), in eval mode on cfg.device."""
    ckpt = load_checkpoint(checkpoint_path(cfg, run_name), num_classes=num_classes)
    model = classifier_from_spec(ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    model.spec = dict(ckpt["model_spec"])
    return model.to(cfg.device).eval()


def truth_labels(cfg: Config, keys: list[str], split: str = "unlabeled") -> torch.Tensor | None:
    """True classes of unlabeled or test images, known only for the demo data (None otherwise)."""
    if cfg.truth_root is None:
        return None
    path = Path(cfg.truth_root) / ("unlabeled.json" if split == "unlabeled" else "test/classification.json")
    if not path.is_file():
        return None
    by_stem = {Path(e["image"]).stem: int(e["class_id"]) for e in json.loads(path.read_text())}
    missing = [k for k in keys if k not in by_stem]
    if missing:
        raise ValueError(f"{path}: no truth for {len(missing)} images, e.g. {missing[:3]}; regenerate the demo")
    return torch.tensor([by_stem[k] for k in keys])


def record(cfg: Config, **values) -> dict:
    """Merge decisions and results (which classifier won, scores) into run_dir/summary.json, atomically."""
    path = Path(cfg.run_dir) / SUMMARY_FILE
    current = load_record(cfg)
    current.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(current, indent=2))
    os.replace(tmp, path)
    mirror_file(path, cfg.mirror_dir)  # a new session (or the next Colab notebook) restores it
    return current


def load_record(cfg: Config) -> dict:
    """What `record` has stored so far for this run ({} before anything)."""
    path = Path(cfg.run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


INITS = ("auto", "scratch", "ssl")


def resolved_init(cfg: Config) -> str:
    """Where the later models start: "ssl" or "scratch"; init "auto" follows notebook 02's check.

    Notebook 02 records `ssl_helps`: whether the pretrained encoder's kNN accuracy (leave-one-out over
    the labeled images) clearly beat that of random weights. With init "auto" (the default) the
    later notebooks start from the encoder only then; before 02 has run, or when it did not win,
    from random weights. IMSUB_INIT=ssl or scratch forces either.
    """
    init = str(cfg.init).strip().lower()
    if init not in INITS:
        raise ValueError(f"unknown init {cfg.init!r} (cfg.init / IMSUB_INIT); choose one of {', '.join(INITS)}")
    if init != "auto":
        return init
    return "ssl" if load_record(cfg).get("ssl_helps") is True else "scratch"


def start_classifier(cfg: Config) -> str:
    """The labeled-only classifier the later notebooks start from: 01's baseline, or 02's when the start is "ssl"."""
    name = SSL_CLASSIFIER_RUN if resolved_init(cfg) == "ssl" else BASELINE_RUN
    if not checkpoint_path(cfg, name).is_file():
        producer = "02_self_supervised" if name == SSL_CLASSIFIER_RUN else "01_classifier_baseline"
        raise FileNotFoundError(f"{checkpoint_path(cfg, name)} not found: run notebook {producer} first "
                                f"(init is {cfg.init!r}; IMSUB_INIT=scratch starts from 01's baseline)")
    return name


def chosen_classifier(cfg: Config) -> str:
    """The classifier run the earlier notebooks chose (03's choice; before it, start_classifier)."""
    return load_record(cfg).get("classifier") or start_classifier(cfg)


def keys_digest(keys: list[str]) -> str:
    """The SHA-1 of a list of image keys: which unlabeled images a stored pseudo-label selection indexes."""
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()


def pseudo_label_tensors(stored: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, labels) of a stored pseudo-label selection, as long tensors."""
    return torch.tensor(stored["indices"], dtype=torch.long), torch.tensor(stored["labels"], dtype=torch.long)


def stored_pseudo_labels(cfg: Config, name: str, teacher_run: str, keys: list[str], select,
                         settings: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, labels) of a pseudo-label selection, stored in run_dir/<name>.json and reused while valid.

    `select()` computes it. A rerun (after a disconnect, say) reuses the stored selection as long as
    the teacher's checkpoint, the unlabeled images and `settings` (threshold, cap) are the same: recomputing it on a GPU can move
    an image across the threshold by a rounding difference, and the student's resume would then see
    other training images and refuse to continue.
    """
    path = Path(cfg.run_dir) / f"{name}.json"
    teacher = checkpoint_path(cfg, teacher_run)
    stamp = {"teacher": teacher.name, "teacher_sha1": hashlib.sha1(teacher.read_bytes()).hexdigest(),
             "keys_sha1": keys_digest(keys), "settings": settings or {}}
    if path.is_file():
        stored = json.loads(path.read_text())
        if all(stored.get(k) == v for k, v in stamp.items()):
            return pseudo_label_tensors(stored)
    indices, labels = select()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**stamp, "indices": indices.tolist(), "labels": labels.tolist()}))
    os.replace(tmp, path)
    return indices, labels
