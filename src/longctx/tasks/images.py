"""Sequential image classification ("sCIFAR-like") on procedurally generated images.

Long Range Arena's image task (Tay et al. 2021, §3.4) classifies CIFAR-10 images read pixel by
pixel. CIFAR-10 cannot be downloaded here (nothing is fetched at run time), so this task draws its
own 10 classes of grayscale shapes instead: disc, square, triangle, plus-cross, ring, hollow
square, bar, striped disc, crescent and two dots, each at a random position, size, rotation and
contrast polarity, over a random smooth background texture with additive pixel noise.
**Numbers on this task are not comparable to LRA's CIFAR-10 image task**; it only exercises the
same setting (a 1,024-step sequence of 8-bit pixels, one label at the end).

Token layout, shared with Pathfinder (``longctx.tasks.pathfinder``): the image's pixels row-major
(token = intensity 0..255), then ``QUERY`` (256); the only scored position is the last, whose
target is ``CLASS0 + label``. ``vocab_size = CLASS0 + n_classes``, ``seq_len = image_size**2 + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from longctx.ops.common import check_positive_int
from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData

QUERY = 256  # the token after the last pixel, where the class is predicted
CLASS0 = 257  # class c is token CLASS0 + c
CLASSES = ("disc", "square", "triangle", "cross", "ring", "frame", "bar", "stripes", "crescent",
           "dots")


def check_image_seq_len(owner: str, seq_len: object, image_size: int) -> None:
    """Refuse ``seq_len`` unless it is ``image_size**2 + 1`` (pixels + the query token)."""
    check_positive_int(f"{owner}.seq_len", seq_len)
    if seq_len != image_size**2 + 1:
        raise ValueError(f"{owner}.seq_len must be image_size**2 + 1 = {image_size**2 + 1} for "
                         f"image_size={image_size} (the pixels and one query token), got {seq_len}")


def to_batch(images: np.ndarray, labels: np.ndarray) -> Batch:
    """Images ``[N, S, S]`` uint8 and labels ``[N]`` -> ``Batch`` of ``[N, S*S + 1]`` int64.

    inputs: the pixels row-major, then ``QUERY``; targets: ``IGNORE_INDEX`` except the last
    position, ``CLASS0 + label``.
    """
    n = images.shape[0]
    inputs = np.empty((n, images.shape[1] * images.shape[2] + 1), dtype=np.int64)
    inputs[:, :-1] = images.reshape(n, -1)
    inputs[:, -1] = QUERY
    targets = np.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = CLASS0 + labels
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets))


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` int64 labels, each class ``n // n_classes`` or one more times, in random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % n_classes)


@dataclass
class ImageConfig:
    seq_len: int = 1025  # tokens per example: image_size**2 pixels + 1 query token
    image_size: int = 32  # images are image_size x image_size (LRA image task: 32)
    n_classes: int = 10  # the first n_classes of CLASSES (2 .. 10)
    noise: float = 12.0  # std of the additive Gaussian pixel noise (intensity units, 0..255)
    num_train: int = 10_000  # training examples
    num_test: int = 1_000  # held-out examples (drawn from a different seed stream)

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("image_size", "n_classes", "num_train", "num_test"):
            check_positive_int(f"{name}.{f}", getattr(self, f))
        if self.image_size < 16:
            raise ValueError(f"{name}.image_size must be >= 16, got {self.image_size}")
        if not 2 <= self.n_classes <= len(CLASSES):
            raise ValueError(f"{name}.n_classes must be in 2..{len(CLASSES)}, got {self.n_classes}")
        if isinstance(self.noise, bool) or not isinstance(self.noise, int | float) or not 0 <= self.noise <= 64:
            raise ValueError(f"{name}.noise must be a number in [0, 64], got {self.noise!r}")
        check_image_seq_len(name, self.seq_len, self.image_size)


def _shape_mask(c: int, u: np.ndarray, v: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Foreground ``[M, S, S]`` bool of class ``c`` in local coordinates ``u, v`` ``[M, S, S]``.

    ``u, v`` are pixel coordinates rotated and scaled so that the shape spans about ``[-1, 1]``;
    ``p`` ``[M, 1, 1]`` is a per-image uniform(0, 1) draw that varies a stroke width or frequency.
    """
    au, av, r = np.abs(u), np.abs(v), np.sqrt(u**2 + v**2)
    thick = 0.25 + 0.15 * p  # stroke width of cross, ring, frame
    if c == 0:  # disc
        return r <= 1
    if c == 1:  # square (side 1.7: about the disc's area)
        return np.maximum(au, av) <= 0.85
    if c == 2:  # equilateral triangle
        return (v >= -0.5) & (np.sqrt(3) * u + v <= 1) & (-np.sqrt(3) * u + v <= 1)
    if c == 3:  # plus-cross
        return ((au <= thick) | (av <= thick)) & (np.maximum(au, av) <= 1)
    if c == 4:  # ring
        return (r <= 1) & (r >= 1 - thick)
    if c == 5:  # hollow square
        return (np.maximum(au, av) <= 0.9) & (np.maximum(au, av) >= 0.9 - thick)
    if c == 6:  # bar
        return (au <= 1) & (av <= 0.3)
    if c == 7:  # striped disc, 2.5 .. 3.5 periods across
        return (r <= 1) & (np.cos(np.pi * (2.5 + p) * u) > 0)
    if c == 8:  # crescent: the unit disc minus a disc shifted along u
        return (r <= 1) & ((u - 0.45 - 0.25 * p) ** 2 + v**2 > 0.8**2)
    return ((u - 0.6) ** 2 + v**2 <= 0.35**2) | ((u + 0.6) ** 2 + v**2 <= 0.35**2)  # two dots


def render_images(labels: np.ndarray, image_size: int, noise: float,
                  rng: np.random.Generator) -> np.ndarray:
    """One image per label: ``[N, S, S]`` uint8 (S = ``image_size``), all in one vectorised pass."""
    n, s = labels.shape[0], image_size
    scale = s / 32  # sizes below are for 32 x 32 and scale with the image
    radius = rng.uniform(5.0, 11.0, n) * scale  # the shape's half-extent in pixels
    cy, cx = (rng.uniform(radius, s - 1 - radius, (2, n)) + rng.uniform(-2, 2, (2, n)) * scale)
    angle = rng.uniform(0, 2 * np.pi, n)
    aspect = rng.uniform(0.85, 1.15, n)  # mild anisotropy so no class is exactly one template
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)  # [S, S]
    dy = (yy[None] - cy[:, None, None]) / radius[:, None, None]  # [N, S, S]
    dx = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    c, sn = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (c * dx + sn * dy) * aspect[:, None, None]
    v = (-sn * dx + c * dy) / aspect[:, None, None]
    p = rng.random((n, 1, 1))
    mask = np.zeros((n, s, s), dtype=bool)
    for c in np.unique(labels):
        sel = labels == c
        mask[sel] = _shape_mask(int(c), u[sel], v[sel], p[sel])

    # background: a mean level plus a smooth random texture (two oriented sinusoids)
    base = rng.uniform(60, 196, (n, 1, 1))
    tex = np.zeros((n, s, s))
    for _ in range(2):
        k = rng.uniform(0.5, 3.0, (n, 1, 1)) * 2 * np.pi / s
        th = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        tex += rng.uniform(5, 25, (n, 1, 1)) * np.sin(k * (np.cos(th) * xx + np.sin(th) * yy) + ph)
    # foreground brighter or darker than the background, by 40 .. 100 levels
    contrast = rng.uniform(40, 100, (n, 1, 1)) * rng.choice([-1.0, 1.0], (n, 1, 1))
    img = base + tex + contrast * mask + rng.normal(0.0, noise, (n, s, s))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _examples(cfg: ImageConfig, n: int, rng: np.random.Generator) -> Batch:
    labels = balanced_labels(n, cfg.n_classes, rng)
    chunk = max(1, 2**19 // cfg.image_size**2)  # bounds the float64 work arrays (~4 MiB each)
    images = np.concatenate([render_images(labels[i:i + chunk], cfg.image_size, cfg.noise, rng)
                             for i in range(0, n, chunk)])
    return to_batch(images, labels)


def make_images(cfg: ImageConfig, seed: int = 0) -> TaskData:
    """Deterministic shape-classification train/test sets for ``seed``: ``[N, image_size**2 + 1]``."""
    train = _examples(cfg, cfg.num_train, np.random.default_rng([seed, 0]))
    test = _examples(cfg, cfg.num_test, np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=CLASS0 + cfg.n_classes, seq_len=cfg.seq_len)
