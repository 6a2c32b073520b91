"""Self-supervised pretraining of the ResNet encoder with SimCLR, before any label (notebook 02).

SimCLR (Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv:2002.05709): every image gives two random views
(augment.contrastive_view); the encoder and a small projection head map each view to a vector; the
NT-Xent loss asks every view to find its partner among all the other views of the batch. Nothing
but the images is used: the labels stay unseen.

`pretrain` runs the `ContrastiveTask` on helpers.engine's loop (mixed precision on a GPU, warmup +
cosine, checkpoints, exact resume, progress bar) and, after every epoch, the kNN monitor of
helpers.probes: kNN accuracy of the validation images against the labeled training images, in the
encoder's feature space. The checkpoint `cfg.run_dir / "ssl_encoder.pt"` keeps the last epoch's
weights (no label picks an epoch); its "model" entry loads into a classifier
(`pipeline.new_classifier(..., encoder_from=path)`) or a U-Net
(`segmentation.new_segmenter(..., encoder_from=path)`) through helpers.transfer. `start_encoder(cfg)`
says, by cfg.init, which start the later notebooks use.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import contrastive_view
from .cache import CachedImages
from .checkpoints import load_checkpoint
from .config import Config
from .engine import FitResult, TrainTask, data_fingerprint, fit_task, spec_of
from .hardware import to_layout
from .models import build_classifier, model_spec
from .pipeline import load_record, resolved_init
from .probes import features, knn_accuracy, knn_leave_one_out, paired_gain
from .transfer import load_encoder_weights

SSL_RUN = "ssl_encoder"  # run name, so the checkpoint is cfg.run_dir / "ssl_encoder.pt"
KIND = "simclr"  # model_spec["kind"] of a pretraining model


# ----------------------------------------------------------------------------- the method
def projection_head(in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> nn.Sequential:
    """SimCLR's projection head g: Linear - BatchNorm - ReLU - Linear (the loss sees its output, not the encoder's)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent: row i of z1 and row i of z2 are partners; each of the 2N views must pick its partner among the other 2N-1."""
    with torch.autocast(z1.device.type, enabled=False):  # similarities in fp32 even under mixed precision
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        similarity = (z @ z.T) / temperature
    n = z1.shape[0]
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pairs, float("-inf"))  # a view is not its own partner
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


@torch.no_grad()
def partner_accuracy(z1: Tensor, z2: Tensor) -> Tensor:
    """How many of the 2N views have their partner as their most similar other view (a label-free progress count)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    similarity = (z @ z.T).fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return (similarity.argmax(1) == partner).sum()


class SimCLR(nn.Module):
    """The encoder f (image -> feature vector, kept afterwards) and the projection head g (dropped afterwards)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.head = projection_head(feature_dim, hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """The projected vectors z = g(f(x)) [B, out_dim]."""
        return self.head(self.encoder(x).flatten(1))


def new_ssl_model(cfg: Config, index, hidden_dim: int = 512, out_dim: int = 128) -> SimCLR:
    """A SimCLR model on a fresh cfg.arch ResNet trunk (its fc removed), .spec attached (kind="simclr").

    index: a DatasetIndex (or anything with num_classes and class_names): the spec records the
    classes so that the checkpoint is checked against the data like every other checkpoint.
    """
    resnet = build_classifier(cfg.arch, 1, small_stem=cfg.small_stem)
    feature_dim = resnet.fc.in_features
    resnet.fc = nn.Identity()
    model = SimCLR(resnet, feature_dim, hidden_dim, out_dim)
    model.spec = model_spec(cfg.arch, int(index.num_classes), cfg.small_stem, ssl_size(cfg), index.class_names)
    model.spec.update(kind=KIND, feature_dim=feature_dim, hidden_dim=hidden_dim, out_dim=out_dim)
    return model


def ssl_size(cfg: Config) -> int:
    """Side of the pretraining views: cfg.ssl_image_size, or cfg.image_size when that is 0."""
    return int(cfg.ssl_image_size or cfg.image_size)


def pretraining_images(train: CachedImages, unlabeled: CachedImages | None) -> CachedImages:
    """The images SimCLR learns from: the labeled training split and the unlabeled images, without masks.

    The validation images are left out on purpose: the kNN monitor and every later model choice
    are measured on them, so the encoder must not have seen them. Test images are never used.
    """
    parts = [dataclasses.replace(train, masks=None)]
    if unlabeled is not None and len(unlabeled):
        parts.append(dataclasses.replace(unlabeled, masks=None))
    return CachedImages.concat(*parts)


# ----------------------------------------------------------------------------- training
class ContrastiveTask(TrainTask):
    """NT-Xent on two contrastive views of each image; the kNN monitor as validation; the last epoch is kept."""

    metric = "epoch"  # always rises, so the engine keeps the latest epoch: no label chooses the weights
    tie_break = "train_loss"
    val_keys = ("knn_acc",)
    num_stats = 2  # loss*n, views whose most similar other view is their partner

    def __init__(self, images: CachedImages, cfg: Config, *, knn_train: CachedImages | None = None,
                 knn_val: CachedImages | None = None):
        self.images, self.cfg = images, cfg
        self.knn_train, self.knn_val = knn_train, knn_val
        self.size, self.temperature = ssl_size(cfg), float(cfg.ssl_temperature)
        self.min_scale = float(cfg.ssl_min_scale)
        self._images = self._knn_train = self._knn_val = None

    def __len__(self) -> int:
        return len(self.images)

    def settings(self) -> dict:
        """What a resumed pretraining must share with its checkpoint."""
        cfg = self.cfg
        return {
            "task": KIND, "optimizer": cfg.optimizer, "lr": float(cfg.ssl_lr),
            "weight_decay": float(cfg.weight_decay), "batch_size": int(cfg.ssl_batch_size),
            "image_size": self.size, "temperature": self.temperature, "min_scale": self.min_scale,
            "warmup_epochs": int(cfg.warmup_epochs), "grad_clip": float(cfg.grad_clip), "seed": int(cfg.seed),
            "num_images": len(self.images), "images_fingerprint": data_fingerprint(self.images),
        }

    def to_device(self, device: torch.device) -> None:
        """Copy the images (and the kNN monitor's labeled images) to the training device."""
        self._images = self.images.images.to(device)
        if self.knn_train is not None and self.knn_val is not None and len(self.knn_val):
            self._knn_train, self._knn_val = self.knn_train.to(device), self.knn_val.to(device)

    def release(self) -> None:
        """Drop the device copies once training ends."""
        self._images = self._knn_train = self._knn_val = None

    def start_epoch(self, steps: int, batch: int, generator: torch.Generator) -> None:
        """A new order of the images for this epoch."""
        self.perm = torch.randperm(len(self.images), generator=generator)

    def next_batch(self, i: int, batch: int, generator: torch.Generator):
        """Step i's two augmented views of a batch of images."""
        idx = self.perm[i * batch:(i + 1) * batch].to(self._images.device, non_blocking=True)
        images = self._images[idx]
        views = [contrastive_view(images, None, self.size, generator, min_scale=self.min_scale)[0]
                 for _ in range(2)]
        return tuple(views)

    def step_loss(self, model: nn.Module, data, channels_last: bool) -> tuple[Tensor, Tensor]:
        """The NT-Xent loss of the two views; returns (loss, summed stats)."""
        v1, v2 = data
        # one forward pass over both views: BatchNorm normalises them together (SimCLR's "global BN")
        z1, z2 = model(to_layout(torch.cat([v1, v2]), channels_last)).float().chunk(2)
        loss = nt_xent_loss(z1, z2, self.temperature)
        stats = torch.stack([loss.detach() * v1.shape[0], partner_accuracy(z1, z2).float()])
        return loss, stats

    def train_record(self, stats: list[float], seen: int, steps: int, batch: int) -> dict:
        """The epoch's loss and partner accuracy (views whose most similar other view is their partner)."""
        return {"train_loss": stats[0] / seen, "train_partner_acc": stats[1] / (2 * seen)}

    def postfix(self, stats: list[float], seen: int) -> dict:
        """Running loss and partner accuracy for the progress bar."""
        return {"loss": f"{stats[0] / seen:.3f}", "partner": f"{stats[1] / (2 * seen):.3f}"}

    def validate(self, model: nn.Module) -> dict:
        """The kNN monitor's accuracy on the encoder's features (NaN without labeled images)."""
        if self._knn_val is None:
            return {"knn_acc": float("nan")}
        return {"knn_acc": knn_monitor(model.encoder, self._knn_train, self._knn_val, self.cfg, self.size)}


def knn_monitor(encoder: nn.Module, train: CachedImages, val: CachedImages, cfg: Config, size: int) -> float:
    """kNN accuracy of the validation images against the labeled training images in the encoder's feature space."""
    return knn_accuracy(features(encoder, train, cfg, size), train.labels.cpu(),
                        features(encoder, val, cfg, size), val.labels.cpu())


def pretrain(
    model: nn.Module,
    images: CachedImages,
    cfg: Config,
    *,
    knn_train: CachedImages | None = None,
    knn_val: CachedImages | None = None,
    run_name: str = SSL_RUN,
    epochs: int | None = None,
    spec: dict | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """SimCLR pretraining on `images` (labels unused): cfg.ssl_* settings, checkpoint, resume, the kNN monitor.

    model: a SimCLR (new_ssl_model). knn_train / knn_val: labeled images for the kNN monitor
      (`knn_acc` in the history after every epoch; NaN without them).
    Batch cfg.ssl_batch_size, AdamW at cfg.ssl_lr with cfg.weight_decay, cfg.warmup_epochs then
    cosine, no weight EMA. History: train_loss, train_partner_acc, knn_acc, lr, seconds, ...
    The model is trained in place and ends with the last epoch's weights.
    """
    if len(images) < 2:
        raise ValueError(f"pretrain: need at least 2 images, got {len(images)}")
    if not isinstance(getattr(model, "encoder", None), nn.Module):
        raise TypeError(f"pretrain: expected a SimCLR model (with .encoder and .head), got {type(model).__name__}")
    task = ContrastiveTask(images, cfg, knn_train=knn_train, knn_val=knn_val)
    run_cfg = dataclasses.replace(cfg, batch_size=int(cfg.ssl_batch_size), ema_decay=0.0)
    return fit_task(model, task, run_cfg, run_name=run_name, epochs=cfg.ssl_epochs if epochs is None else epochs,
                    lr=cfg.ssl_lr, spec=spec_of(model, spec), resume=resume, progress=progress)


def encoder_check(pretrained: Tensor, random: Tensor, labels: Tensor) -> dict:
    """Does pretraining help? Leave-one-out kNN accuracy of the labeled images, pretrained vs random features.

    `pretrained` and `random`: features [N, D] of the same labeled images (every split: the labels are
    only read) from the pretrained encoder and from the same network at its random start. The
    result's "clearly_better" (probes.paired_gain) is what init "auto" follows (pipeline.resolved_init).
    """
    ours, theirs = knn_leave_one_out(pretrained, labels), knn_leave_one_out(random, labels)
    return {"knn_pretrained": float(ours.float().mean()), "knn_random": float(theirs.float().mean()),
            **paired_gain(ours, theirs)}


# ----------------------------------------------------------------------------- where later models start
def ssl_checkpoint(cfg: Config) -> Path:
    """Where notebook 02 writes the pretrained encoder: cfg.run_dir / "ssl_encoder.pt"."""
    return Path(cfg.run_dir) / f"{SSL_RUN}.pt"


def check_encoder_file(cfg: Config, path: str | Path, num_classes: int | None = None) -> dict:
    """Load a pretraining checkpoint and check it fits cfg's encoder; ValueError naming the file if not."""
    path = Path(path)
    ckpt = load_checkpoint(path, num_classes=num_classes)
    spec = ckpt.get("model_spec") or {}
    if spec.get("kind") != KIND or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"checkpoint {path} is not a self-supervised encoder (model_spec kind "
                         f"{spec.get('kind')!r}, expected {KIND!r}); rerun notebooks/02_self_supervised.ipynb")
    for key in ("arch", "small_stem"):
        if key in spec and spec[key] != getattr(cfg, key):
            raise ValueError(f"checkpoint {path} holds a {key}={spec[key]!r} encoder but the config asks for "
                             f"{key}={getattr(cfg, key)!r}; rerun notebook 02 with this setting, or change it back")
    probe = build_classifier(cfg.arch, 1, small_stem=cfg.small_stem)
    load_encoder_weights(probe, path)  # every trunk tensor must fit; errors name the file
    return ckpt


def encoder_worth_trying(cfg: Config) -> bool:
    """Whether notebook 02's encoder is a start worth training from: written, and not failed by its check (or forced)."""
    if not ssl_checkpoint(cfg).is_file():
        return False
    return str(cfg.init).lower() == "ssl" or load_record(cfg).get("ssl_helps") is not False


def start_encoder(cfg: Config, num_classes: int | None = None) -> Path | None:
    """The encoder later models start from (pipeline.resolved_init): None for random weights, else the checked checkpoint; printed."""
    init = resolved_init(cfg)
    if init == "scratch":
        why = ("init='scratch'" if str(cfg.init).lower() == "scratch" else
               "init='auto': notebook 02's encoder did not clearly beat random weights, or 02 has not run")
        print(f"start: random weights ({why}; IMSUB_INIT=ssl starts from notebook 02's encoder)")
        return None
    path = ssl_checkpoint(cfg)
    ckpt = check_encoder_file(cfg, path, num_classes)
    knn = [h["knn_acc"] for h in ckpt.get("history", []) if not math.isnan(h.get("knn_acc", math.nan))]
    shown = f", kNN accuracy {knn[-1]:.3f}" if knn else ""
    print(f"start: self-supervised encoder {path} (SimCLR, {ckpt.get('epoch')} epochs{shown})")
    return path

