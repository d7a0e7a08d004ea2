"""Train the demo checkpoints (``sample_data/model.pth``, ``sample_data/fragile/model.pth``)
on freshly rendered synthetic images.

The training images come from :mod:`aslquant.synth` with a seed different from the shipped
sample's (2026), so the shipped sample is a held-out test set the model never saw. The
preprocessing is Pillow JPEG decode, RGB, 224x224, ``float32 / 255``, then either nothing
(the engine default, the robust demo) or ImageNet mean/std (``--normalize imagenet``, the
fragile demo). Training images go through the same JPEG file encoding as the shipped ones.

Two ways to train, one per demo:

* default: BatchNorm after every layer while training, folded into the weights afterwards.
  That model is robust to INT8 (the default recipe loses about 0.1-0.2 points).
* ``--plain``: the seed CustomCNN as it is, no BatchNorm, the way most users train it. With
  ImageNet normalization, plain cross-entropy and no weight decay this makes the fragile demo,
  whose default INT8 recipe visibly hurts (sample_data/README.md has the command and figures).

Most epochs run at a lower resolution (progressive resizing: much faster on a CPU, and the
network ends in adaptive average pooling so the same weights apply at any size); the last
epochs run at the full 224 x 224 the model is evaluated at.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from aslquant import synth
from aslquant.data import IMAGENET_MEAN, IMAGENET_STD
from aslquant.errors import InputError
from aslquant.model import CustomCNN
from aslquant.synth import CLASS_NAMES, render_bytes

INPUT_SIZE = 224
#: Input normalization after /255, by name; "imagenet" is what most users normalize with.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
# The cache key includes the renderer's source, so editing synth.py never reuses stale images.
_RENDERER_ID = hashlib.sha256(Path(synth.__file__).read_bytes()).hexdigest()[:12]


def _decode(data: bytes) -> np.ndarray:
    """Engine-default decode: RGB, 224x224 bilinear (no-op for 224 images), uint8 HWC."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (INPUT_SIZE, INPUT_SIZE):
        img = img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _render_class(job: tuple[str, int, int, str | None]) -> list[bytes]:
    """Worker: the JPEG bytes of one class's training images (read from or written to cache)."""
    name, seed, per_class, cache = job
    out = []
    for i in range(1, per_class + 1):
        path = Path(cache) / f"{_RENDERER_ID}-{seed}" / name / f"{name}{i}.jpg" if cache else None
        if path is not None and path.is_file():
            data = path.read_bytes()
        else:
            data = render_bytes(name, seed, i)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        out.append(data)
    return out


def _training_set(
    seed: int, per_class: int, cache: Path | None, workers: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render (or reuse from ``cache``) the training images as uint8 NCHW plus labels."""
    n = per_class * len(CLASS_NAMES)
    images = torch.empty((n, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.long)
    t0 = time.perf_counter()
    jobs = [(name, seed, per_class, str(cache) if cache else None) for name in CLASS_NAMES]
    # Every image is seeded on its own, so rendering classes in parallel changes nothing.
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            blobs = [b for chunk in pool.map(_render_class, jobs) for b in chunk]
    else:
        blobs = [b for job in jobs for b in _render_class(job)]
    for k, data in enumerate(blobs):
        images[k] = torch.from_numpy(_decode(data).copy()).permute(2, 0, 1)
        labels[k] = k // per_class
    print(f"training images: {n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return images, labels


def load_folder(root: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``root/<class>/*.jpg`` (Kaggle layout, CLASS_NAMES order) as uint8 NCHW + labels."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: evaluation folder not found")
    arrays, labels = [], []
    for ci, name in enumerate(CLASS_NAMES):
        for path in sorted((root / name).glob("*.jpg")):
            arrays.append(_decode(path.read_bytes()))
            labels.append(ci)
    if not arrays:
        raise InputError(f"{root}: no <class>/*.jpg images found")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels)


def _normalize(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """``x`` (0..1, NCHW RGB) normalized in place as ``normalize`` names (see NORMALIZATIONS)."""
    stats = NORMALIZATIONS[normalize]
    if stats is None:
        return x
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    return x.sub_(mean).div_(std)


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: torch.Tensor, batch: int = 64, normalize: str = "none"
) -> torch.Tensor:
    """Top-1 class indices for uint8 NCHW images (/255, then ``normalize``)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        x = _normalize(images[start : start + batch].float().div_(255), normalize)
        out.append(model(x).argmax(1))
    return torch.cat(out)


def _batch(
    images: torch.Tensor,
    idx: torch.Tensor,
    res: int,
    gen: torch.Generator,
    normalize: str = "none",
) -> torch.Tensor:
    """A training batch at ``res``, with one random crop (88-100 % of the side) per batch."""
    x = _normalize(images[idx].float().div_(255), normalize)
    side = int(INPUT_SIZE * (0.88 + 0.12 * float(torch.rand(1, generator=gen))))
    oy, ox = (int(v) for v in torch.randint(0, INPUT_SIZE - side + 1, (2,), generator=gen))
    x = x[:, :, oy : oy + side, ox : ox + side]
    if side != res:
        x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


class _TrainNet(nn.Module):
    """CustomCNN with BatchNorm after every conv and fc1, for training only.

    The seed architecture has no normalisation and its inputs are not mean-centred, so from
    scratch it sits on the ln(29) plateau for a long time. BatchNorm fixes that; after
    training each BatchNorm is folded into the layer before it (exact in eval mode), so
    the saved state_dict is the plain seed CustomCNN's.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = CustomCNN(num_classes)
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in (16, 32, 64, 128))
        self.bn5 = nn.BatchNorm1d(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.net
        for conv, bn in zip((m.conv1, m.conv2, m.conv3, m.conv4), self.bns, strict=True):
            x = m.pool(F.relu(bn(conv(x))))
        x = torch.flatten(m.avgpool(x), 1)
        x = F.relu(self.bn5(m.fc1(x)))
        return m.fc2(x)

    def folded(self) -> CustomCNN:
        """A plain CustomCNN computing the same function as this net in eval mode."""
        self.eval()
        src = self.net
        state = {}
        for name, bn in zip(("conv1", "conv2", "conv3", "conv4"), self.bns, strict=True):
            fused = fuse_conv_bn_eval(getattr(src, name), bn)
            state[f"{name}.weight"], state[f"{name}.bias"] = fused.weight, fused.bias
        fused = fuse_linear_bn_eval(src.fc1, self.bn5)
        state["fc1.weight"], state["fc1.bias"] = fused.weight, fused.bias
        state["fc2.weight"], state["fc2.bias"] = src.fc2.weight, src.fc2.bias
        out = CustomCNN(src.num_classes)
        out.load_state_dict({k: v.detach().clone().contiguous() for k, v in state.items()})
        return out.eval()


def train(
    seed: int,
    per_class: int,
    epochs: int,
    full_res_epochs: int,
    low_res: int,
    batch_size: int,
    lr: float,
    cache: Path | None,
    plain: bool = False,
    normalize: str = "none",
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.05,
) -> tuple[CustomCNN, dict]:
    """Train a CustomCNN(29) from scratch; returns the model and timing figures.

    ``plain``: train the seed CustomCNN itself (no BatchNorm to fold); otherwise train
    ``_TrainNet`` and fold its BatchNorms. ``normalize``: a key of NORMALIZATIONS, applied to
    every training batch (the checkpoint then expects the same preprocessing).
    """
    if normalize not in NORMALIZATIONS:
        raise InputError(f"--normalize {normalize!r}: not one of {', '.join(NORMALIZATIONS)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    images, labels = _training_set(seed, per_class, cache, workers=torch.get_num_threads())
    t_data = time.perf_counter() - t0
    torch.manual_seed(seed)
    net = CustomCNN(len(CLASS_NAMES)) if plain else _TrainNet(len(CLASS_NAMES))
    model = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = steps_per_epoch * epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total, pct_start=0.15, anneal_strategy="cos"
    )
    t1 = time.perf_counter()
    for epoch in range(epochs):
        # Progressive resizing: low_res, then one epoch half-way, then the full 224.
        first_full = epochs - full_res_epochs
        if epoch >= first_full:
            res = INPUT_SIZE
        elif epoch == first_full - 1 and epochs > 2:
            res = (low_res + INPUT_SIZE) // 32 * 16
        else:
            res = low_res
        model.train()
        order = torch.randperm(len(images), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x, y = _batch(images, idx, res, gen, normalize), labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            if (step + 1) % 50 == 0:
                print(
                    f"  step {step + 1}/{steps_per_epoch} ({time.perf_counter() - t1:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        print(
            f"epoch {epoch + 1}/{epochs} res {res}: loss {loss_sum / seen:.3f} "
            f"train top-1 {correct / seen:.3f} ({time.perf_counter() - t1:.0f} s)",
            flush=True,
        )
    model = model.to(memory_format=torch.contiguous_format)
    if plain:
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        trained = CustomCNN(len(CLASS_NAMES))
        trained.load_state_dict(state)
    else:
        trained = model.folded()
    figures = {
        "data_seconds": t_data,
        "train_seconds": time.perf_counter() - t1,
        "train_images": len(images),
    }
    return trained.eval(), figures


def train_demo_main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m aslquant train-demo [--seed S] [--epochs E] [--per-class N] [--out P]``
    (``--plain --normalize imagenet`` for the fragile demo)."""
    p = argparse.ArgumentParser(
        prog="aslquant train-demo",
        description="Train the demo CustomCNN on synthetic images (never on the shipped sample).",
    )
    p.add_argument("--seed", type=int, default=1, help="training seed (default 1; not 2026)")
    p.add_argument("--per-class", type=int, default=200, help="training images per class")
    p.add_argument("--epochs", type=int, default=6, help="epochs in all (default 6)")
    p.add_argument("--full-res-epochs", type=int, default=1, help="last epochs at 224 px")
    p.add_argument("--low-res", type=int, default=128, help="side for the early epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.05)
    p.add_argument(
        "--plain",
        action="store_true",
        help="train the seed CustomCNN as is (no BatchNorm, nothing folded): the fragile demo",
    )
    p.add_argument(
        "--normalize",
        choices=tuple(NORMALIZATIONS),
        default="none",
        help="input normalization after /255 (default none; imagenet: ImageNet mean/std)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default="sample_data/model.pth", help="where to save the state_dict")
    p.add_argument("--eval", default="sample_data/images", help="held-out folder to score on")
    p.add_argument(
        "--cache", default="/tmp/aslquant-train-cache", help="training JPEG cache ('' for none)"
    )
    args = p.parse_args(argv)
    try:
        if args.seed == 2026:
            raise InputError("--seed 2026: that is the shipped sample's seed; pick another")
        for opt in ("per_class", "epochs", "batch_size", "threads"):
            if getattr(args, opt) < 1:
                raise InputError(f"--{opt.replace('_', '-')}: must be at least 1")
        if not 0 <= args.full_res_epochs <= args.epochs:
            raise InputError(f"--full-res-epochs {args.full_res_epochs}: must be 0..--epochs")
        if args.weight_decay < 0:
            raise InputError(f"--weight-decay {args.weight_decay}: must not be negative")
        if not 0 <= args.label_smoothing < 1:
            raise InputError(f"--label-smoothing {args.label_smoothing}: must be in [0, 1)")
        if args.low_res < 68:
            raise InputError(f"--low-res {args.low_res}: the network needs at least 68 px")
        torch.set_num_threads(args.threads)
        cache = Path(args.cache) if args.cache else None
        t0 = time.perf_counter()
        model, fig = train(
            args.seed,
            args.per_class,
            args.epochs,
            args.full_res_epochs,
            args.low_res,
            args.batch_size,
            args.lr,
            cache,
            plain=args.plain,
            normalize=args.normalize,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
        )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out)
        wall = time.perf_counter() - t0
        print(
            f"saved {out}; {fig['train_images']} training images (seed {args.seed}); "
            f"data {fig['data_seconds']:.0f} s, training {fig['train_seconds']:.0f} s, "
            f"wall {wall:.0f} s on {args.threads} threads"
        )
        if args.eval and Path(args.eval).is_dir():
            images, labels = load_folder(args.eval)
            pred = predict(model, images, normalize=args.normalize)
            acc = float((pred == labels).float().mean())
            print(f"held-out {args.eval}: FP32 top-1 {acc:.4f} on {len(labels)} images")
            wrong = {}
            for t, q in zip(labels.tolist(), pred.tolist(), strict=True):
                if t != q:
                    key = f"{CLASS_NAMES[t]}->{CLASS_NAMES[q]}"
                    wrong[key] = wrong.get(key, 0) + 1
            if wrong:
                top = sorted(wrong.items(), key=lambda kv: -kv[1])[:12]
                print("most frequent confusions: " + ", ".join(f"{k} x{v}" for k, v in top))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(train_demo_main(sys.argv[1:]))
