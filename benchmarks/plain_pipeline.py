"""A plain tutorial-style pipeline, to compare ours with on the same data, image size and epochs.

    pip install segmentation-models-pytorch   # (or: pip install -e ".[plain]")
    python benchmarks/plain_pipeline.py --preset cpu --seed 0 --out /tmp/plain/s0

What a newcomer writes from the PyTorch and smp tutorials, with no validation split: torchvision's
resnet18 from random weights trained on every labeled image (a PIL Dataset and DataLoader,
transforms.v2: resize, horizontal flip, normalize; Adam at 1e-3, cross-entropy); one round of
pseudo-labels (unlabeled images the classifier gives at least 0.9, added to the labeled ones, a
fresh resnet18 trained on both); an smp U-Net (resnet18 encoder, random weights) for the object's
foreground (BCE, resize + flip applied to image and mask alike); the mask is the foreground labelled
with the classifier's class. Epochs and image size come from the preset (cfg.epochs,
cfg.pseudo_epochs, cfg.seg_epochs, cfg.image_size) so that both pipelines see the same budget.
The submission is written with helpers.submission and scored on the demo's hidden truth with
helpers.metrics, as `python -m helpers run` does; the scores go to OUT/plain.json. Each trained
model is kept in OUT (teacher.pt, student.pt, unet.pt, with the pseudo-labels and stage times), so
that a run killed on the way and started again with the same arguments takes back the finished
stages: every stage seeds itself, so the result is the same.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import models, tv_tensors
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers  # noqa: E402
from helpers.data import load_index, split_labeled  # noqa: E402
from helpers.images import load_image  # noqa: E402
from helpers.masks import read_label_mask  # noqa: E402
from helpers.metrics import score_submission  # noqa: E402
from helpers.pipeline import truth_labels  # noqa: E402
from helpers.submission import write_submission  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Images(Dataset):
    """(image, label[, foreground mask]) from the files, decoded by PIL every time."""

    def __init__(self, samples, labels, size: int, train: bool, masks: bool = False, num_classes: int = 0):
        self.samples, self.labels, self.masks, self.k = samples, labels, masks, num_classes
        steps = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
        if train:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        image = load_image(s.image)
        if not self.masks:
            return self.transform(image), self.labels[i]
        index = read_label_mask(s.mask, s.label, self.k)
        fg = np.where(index == 255, 255, (index > 0).astype(np.uint8) * 1).astype(np.uint8)
        image, mask = self.transform(image, tv_tensors.Mask(torch.from_numpy(fg)[None]))
        return image, mask[0].long()


def train_classifier(samples, labels, k, size, epochs, seed) -> nn.Module:
    """resnet18 from random weights, Adam 1e-3, cross-entropy, batch 32."""
    torch.manual_seed(seed)
    model = models.resnet18(num_classes=k)
    loader = DataLoader(Images(samples, labels, size, train=True), batch_size=32, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), torch.as_tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model, samples, size) -> torch.Tensor:
    """Softmax probabilities of every image (no test-time augmentation)."""
    loader = DataLoader(Images(samples, [0] * len(samples), size, train=False), batch_size=64)
    return torch.cat([model(x).softmax(1) for x, _ in loader])


def train_unet(samples, k, size, epochs, seed) -> nn.Module:
    """smp U-Net, resnet18 encoder from random weights, one foreground channel, BCE (ignore pixels left out)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, classes=1)
    loader = DataLoader(Images(samples, None, size, train=True, masks=True, num_classes=k), batch_size=32, shuffle=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for x, m in loader:
            keep = m != 255
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0][keep], m[keep].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _stage(out: Path, name: str, times: dict[str, float], make: Callable[[], nn.Module],
           train: Callable[[], nn.Module]) -> nn.Module:
    """OUT/<name>.pt if an earlier try finished this stage, else train it and keep it (temporary name + rename)."""
    path, times_file = out / f"{name}.pt", out / "stage_seconds.json"
    earlier = json.loads(times_file.read_text()) if times_file.is_file() else {}
    if path.is_file() and name in earlier:
        model = make()
        model.load_state_dict(torch.load(path, weights_only=True))
        times[name] = earlier[name]
        return model.eval()
    t = time.perf_counter()
    model = train()
    times[name] = time.perf_counter() - t
    part = path.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), part)
    part.replace(path)
    times_file.write_text(json.dumps({**earlier, name: times[name]}))
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--hold-out", action="store_true",
                        help="train on our training split only (cfg.val_per_class images per class left out, "
                             "as ours does): separates the labels from the recipe")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarks/plain_pipeline.py needs segmentation-models-pytorch: "
                         "pip install -e '.[plain]'") from None
    cfg = helpers.get_config(args.preset, **({"data_root": Path(args.data_root)} if args.data_root else {}))
    index, size = load_index(cfg.data_root), cfg.image_size
    k = index.num_classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}

    labeled = index.labeled
    if args.hold_out:
        labeled = split_labeled(labeled, cfg.val_per_class, args.seed)[0]
    labels = [s.label for s in labeled]
    teacher = _stage(out, "teacher", times, lambda: models.resnet18(num_classes=k),
                     lambda: train_classifier(labeled, labels, k, size, cfg.epochs, args.seed))

    t = time.perf_counter()
    probs = predict(teacher, index.unlabeled, size)
    confidence, guess = probs.max(1)
    kept = (confidence >= args.threshold).nonzero().flatten().tolist()
    times["pseudo_labels"] = time.perf_counter() - t
    student = _stage(out, "student", times, lambda: models.resnet18(num_classes=k),
                     lambda: train_classifier(labeled + [index.unlabeled[i] for i in kept],
                                              labels + [int(guess[i]) for i in kept], k, size, cfg.pseudo_epochs,
                                              args.seed))

    import segmentation_models_pytorch as smp
    unet = _stage(out, "unet", times, lambda: smp.Unet("resnet18", encoder_weights=None, classes=1),
                  lambda: train_unet(labeled, k, size, cfg.seg_epochs, args.seed))

    t = time.perf_counter()
    classes = predict(student, index.test, size).argmax(1)
    entries = []
    loader = DataLoader(Images(index.test, [0] * len(index.test), size, train=False), batch_size=64)
    with torch.no_grad():
        fg = torch.cat([unet(x).sigmoid() for x, _ in loader])
    for s, c, f in zip(index.test, classes.tolist(), fg):
        w, h = load_image(s.image).size
        mask = F.interpolate(f[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
        entries.append((s.image.name, c, (mask.numpy() * (c + 1)).astype(np.int32)))
    submission = out / "submission"
    write_submission(submission, entries, test_dir=index.root / "test", num_classes=k)
    times["predict_and_write"] = time.perf_counter() - t

    result = {"seed": args.seed, "preset": args.preset, "hold_out": args.hold_out, "labeled": len(labeled),
              "pseudo_kept": len(kept), "seconds": times}
    truth = cfg.truth_root / "test" if cfg.truth_root else None
    if truth is not None and truth.is_dir():
        score = score_submission(submission, truth, k)
        result.update(test_accuracy=score["accuracy"], test_miou=score["miou"])
        true_test = truth_labels(cfg, [s.key for s in index.test], split="test")
        teacher_guess = predict(teacher, index.test, size).argmax(1)
        result["teacher_test_accuracy"] = (teacher_guess == true_test).float().mean().item()
        true_unlabeled = truth_labels(cfg, [s.key for s in index.unlabeled])
        if true_unlabeled is not None:
            right = (true_unlabeled[kept] == guess[kept]).sum().item()
            result["pseudo_precision"] = right / max(len(kept), 1)
    (out / "plain.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
