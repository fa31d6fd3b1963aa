"""Pathfinder (Linsley et al. 2018), as in Long Range Arena (Tay et al. 2021, §3.5): are the two
circle markers joined by one dashed contour? Our own generator, vectorised over examples.

An image holds two target "snakes" of ``contour_length`` paddles (dashes) each and
``n_distractors`` shorter snakes. A snake is a random walk whose heading turns by at most
``max_turn_deg`` per paddle (bounded curvature); each paddle is ``PADDLE_LENGTH`` pixels and
consecutive paddles are separated by one empty pixel. Positive (label 1): both markers sit on the
two ends of the first target snake. Negative (label 0): one marker on an end of each target snake.
Both classes have the same number and lengths of snakes (so the same ink area), and labels are
balanced. In a negative the two marked ends are, of the four choices, the pair whose distance
is closest to the first target's own end-to-end distance (the marker distance of a positive);
a threshold on the marker distance alone still separates the classes at about 63% for contour
length 14 (53-60% for 6 and 9), a bias the original datasets share in kind. Each snake's shape is drawn first and then put at a random position where it keeps its
distance from the earlier snakes (every position is tested at once, by an FFT cross-correlation
of the shape with the taken pixels); an image where a snake finds no place is redrawn.

The exact property the generator guarantees (and the tests check with an independent flood fill):
link two ink pixels when their Chebyshev distance is at most ``LINK`` (2; equivalently, dilate the
ink by a 2 x 2 box and take 8-connected components). Then every snake with its markers is one
component, and different snakes are different components, because pixels of different snakes
are at Chebyshev distance >= ``CLEARANCE`` (3). So label 1 <=> the markers are in one component.

The default is LRA's 32 x 32 Pathfinder with the hard contour length 14 (LRA; Linsley et al.
also use 6 and 9); ``image_size=128`` gives a Path-X-sized image (markers scale with the image).
Everything is drawn at one per-image intensity on a black background, without anti-aliasing, so
these images are not LRA's (which are rendered larger and downsampled): scores are comparable in
kind, not in value. Token layout as in
``longctx.tasks.images``: pixels row-major, then ``QUERY``; target ``CLASS0 + label`` at the last
position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from longctx.ops.common import check_positive_int
from longctx.tasks.base import Batch, TaskData
from longctx.tasks.images import CLASS0, balanced_labels, check_image_seq_len, to_batch

PADDLE_LENGTH = 2  # pixels per paddle (dash)
GAP = 1  # empty pixels between consecutive paddles: their nearest pixels are GAP + 1 apart
LINK = GAP + 1  # Chebyshev distance that joins the pixels of one snake
CLEARANCE = LINK + 1  # smallest Chebyshev distance between pixels of different snakes
CANDIDATES = 8  # random shapes tried at once per snake and round
ROUNDS = 3  # rounds of CANDIDATES before an image is redrawn
REDRAWS = 100  # redraws of an image before the layout is declared impossible


@dataclass
class PathfinderConfig:
    seq_len: int = 1025  # tokens per example: image_size**2 pixels + 1 query token
    image_size: int = 32  # LRA Pathfinder: 32; Path-X: 128
    contour_length: int = 14  # paddles per target snake (LRA hard split: 14; also 6 and 9)
    n_distractors: int = 2  # distractor snakes per image (0 allowed)
    distractor_length: int = 5  # paddles per distractor snake
    max_turn_deg: float = 45.0  # largest heading change from one paddle to the next (degrees)
    num_train: int = 2000  # training examples
    num_test: int = 256  # held-out examples (drawn from a different seed stream)

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("image_size", "contour_length", "distractor_length", "num_train", "num_test"):
            check_positive_int(f"{name}.{f}", getattr(self, f))
        if self.image_size < 16:
            raise ValueError(f"{name}.image_size must be >= 16, got {self.image_size}")
        if isinstance(self.n_distractors, bool) or not isinstance(self.n_distractors, int) \
                or self.n_distractors < 0:
            raise ValueError(f"{name}.n_distractors must be a non-negative integer, "
                             f"got {self.n_distractors!r}")
        turn = self.max_turn_deg
        if isinstance(turn, bool) or not isinstance(turn, int | float) or not 0 < turn <= 60:
            raise ValueError(f"{name}.max_turn_deg must be a number in (0, 60], got {turn!r}")
        check_image_seq_len(name, self.seq_len, self.image_size)
        # a target snake spans about 3 pixels per paddle; it must fit in the image
        if (PADDLE_LENGTH + GAP) * self.contour_length > 4 * self.image_size:
            raise ValueError(f"{name}.contour_length={self.contour_length} is too long for "
                             f"image_size={self.image_size} (at most {4 * self.image_size // 3})")


def _square(r: int) -> np.ndarray:
    """Offsets ``[(2r+1)^2, 2]`` of the Chebyshev ball of radius ``r``."""
    d = np.arange(-r, r + 1)
    return np.stack(np.meshgrid(d, d, indexing="ij"), -1).reshape(-1, 2)


def marker_offsets(image_size: int) -> np.ndarray:
    """Pixels ``[M, 2]`` of a marker disc around a snake's end: radius image_size // 32 (3 x 3 at 32)."""
    r = max(1, image_size // 32)
    sq = _square(r)
    return sq[(sq**2).sum(1) <= (r + 0.5) ** 2]


HALO = _square(CLEARANCE - 1)  # [25, 2]: pixels a different snake may not occupy


def _mark(mask: np.ndarray, pix: np.ndarray, offsets: np.ndarray) -> None:
    """Set ``mask[i, pix[i, j] + offsets[k]]`` for all i, j, k (clipped to the image), in place.

    mask ``[N, S, S]`` bool; pix ``[N, P, 2]`` int (y, x); offsets ``[K, 2]``.
    """
    n, s = mask.shape[0], mask.shape[1]
    at = np.clip(pix[:, :, None, :] + offsets, 0, s - 1).reshape(n, -1, 2)  # [N, P*K, 2]
    mask[np.arange(n)[:, None], at[..., 0], at[..., 1]] = True


def _steps(theta: np.ndarray, length: int) -> np.ndarray:
    """Integer steps ``[..., 2]`` (dy, dx) of Chebyshev length exactly ``length`` along ``theta``."""
    d = np.stack([np.sin(theta), np.cos(theta)], -1)
    d /= np.abs(d).max(-1, keepdims=True)  # Chebyshev-unit: the larger component is exactly +-1
    return np.rint(length * d).astype(np.int64)


def _shapes(shape: tuple[int, ...], n_paddles: int, max_turn: float,
            rng: np.random.Generator) -> np.ndarray:
    """Random snakes ``[*shape, n_paddles, PADDLE_LENGTH, 2]`` (y, x) starting at the origin.

    The heading starts uniform in [0, 2 pi) and turns from each paddle to the next by a steady
    per-snake bend plus noise, each uniform in ``+-max_turn / 2``: the curvature is bounded by
    ``max_turn`` per paddle, and the bend makes snakes compact enough to fit two long ones.
    Within a paddle pixels are 8-neighbours; the first pixel of a paddle is at Chebyshev distance
    exactly GAP + 1 from the last pixel of the previous one.
    """
    bend = rng.uniform(-0.5, 0.5, (*shape, 1)) * max_turn  # a steady bend per snake, plus noise
    turns = bend + rng.uniform(-0.5, 0.5, (*shape, n_paddles)) * max_turn
    turns[..., 0] = rng.uniform(0, 2 * np.pi, shape)
    theta = np.cumsum(turns, -1)  # [*shape, P]
    body = np.stack([_steps(theta, j) for j in range(PADDLE_LENGTH)], -2)  # [*shape, P, PL, 2]
    hop = _steps(theta, GAP + 1)  # from the previous paddle's last pixel to this paddle's first
    hop[..., 1:, :] += body[..., :-1, -1, :]
    hop[..., 0, :] = 0
    return np.cumsum(hop, axis=-2)[..., None, :] + body


def _self_clear(pix: np.ndarray, n_paddles: int) -> np.ndarray:
    """``[...]`` bool: no paddle of the snakes ``pix`` ``[..., P*PL, 2]`` comes within Chebyshev 3
    (first pixels) of a paddle 3 or more places along, so a snake never touches itself."""
    i, j = np.triu_indices(n_paddles, 3)
    first = pix[..., ::PADDLE_LENGTH, :].astype(np.int16)  # [..., P, 2]
    d = np.abs(first[..., i, :] - first[..., j, :])  # [..., pairs, 2]
    return ~((d[..., 0] <= 3) & (d[..., 1] <= 3)).any(-1)


def _place(blocked: np.ndarray, foot: np.ndarray, usable: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random shifts that put footprints where they touch no ``blocked`` pixel.

    blocked ``[N, S, S]`` bool (the border included); foot ``[N, K, F, 2]`` with its bounding box
    at the origin; usable ``[N, K]``. Every shift of every footprint is tested at once, as a
    cross-correlation of footprint and ``blocked`` by FFT. Returns, per image, the first
    footprint ``k`` ``[N]`` that has a clear shift, a random such shift ``[N, 2]``, and
    ``ok`` ``[N]``.
    """
    n, k, s = foot.shape[0], foot.shape[1], blocked.shape[1]
    hi = foot.max(2)  # [N, K, 2]
    usable = usable & (hi <= s - 1).all(-1)
    t = np.arange(s)
    valid = ((t[:, None] <= s - 1 - hi[..., 0, None, None])
             & (t[None, :] <= s - 1 - hi[..., 1, None, None]) & usable[..., None, None])
    if blocked[:, 1:-1, 1:-1].any():  # else only the border is blocked: any shift in range is clear
        mask = np.zeros((n, k, s, s), dtype=np.float32)
        at = np.minimum(foot, s - 1)
        mask[np.arange(n)[:, None, None], np.arange(k)[None, :, None], at[..., 0], at[..., 1]] = 1
        # corr[t] = sum_p mask[p] * blocked[p + t] (circular; the shifts that wrap are not valid)
        spec = np.conj(np.fft.rfft2(mask)) * np.fft.rfft2(blocked.astype(np.float32))[:, None]
        valid &= np.fft.irfft2(spec, s=(s, s)) < 0.5  # [N, K, S, S]
    has = valid.any((-1, -2))  # [N, K]
    pick = has.argmax(1)
    chosen = valid[np.arange(n), pick].reshape(n, -1)  # [N, S*S]
    shift = np.where(chosen, rng.random(chosen.shape), -1.0).argmax(1)
    return pick, np.stack([shift // s, shift % s], -1), has.any(1)


def _snake(taken: np.ndarray, n_paddles: int, marker: np.ndarray | None, max_turn: float,
           rng: np.random.Generator, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place one snake in each of N images, clear of the pixels ``taken`` ``[N, S, S]``.

    ``CANDIDATES`` random shapes (``_shapes``) per image, those that touch themselves dropped,
    are tried at every position inside the 1-pixel border; the first shape that fits somewhere
    clear of ``taken`` (with the ``marker`` discs ``[M, 2]`` at both ends, if given) is put at a
    random such position. Returns its pixels ``[N, n_paddles * PADDLE_LENGTH, 2]`` (y, x; the
    first and last are its ends) and ``ok`` ``[N]``: False where nothing fits after ``ROUNDS``
    rounds (that image is redrawn) and where not ``active`` ``[N]`` (not tried).
    """
    n, s = taken.shape[0], taken.shape[1]
    blocked = taken.copy()
    blocked[:, [0, -1], :] = True
    blocked[:, :, [0, -1]] = True
    out = np.zeros((n, n_paddles * PADDLE_LENGTH, 2), dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    chunk = max(1, 2**21 // (CANDIDATES * s * s))  # images per FFT batch (bounds its memory)
    for _ in range(ROUNDS):
        todo = np.flatnonzero(active & ~ok)
        if todo.size == 0:
            break
        for rows in np.array_split(todo, -(-todo.size // chunk)):
            m = rows.size
            pix = _shapes((m, CANDIDATES), n_paddles, max_turn, rng).reshape(m, CANDIDATES, -1, 2)
            foot = pix
            if marker is not None:
                discs = (pix[:, :, [0, -1], None, :] + marker).reshape(m, CANDIDATES, -1, 2)
                foot = np.concatenate([pix, discs], 2)
            lo = foot.min(2, keepdims=True)
            pick, shift, found = _place(blocked[rows], foot - lo, _self_clear(pix, n_paddles), rng)
            i = np.arange(m)
            out[rows] = pix[i, pick] - lo[i, pick] + shift[:, None, :]
            ok[rows] = found
    return out, ok


def draw_pathfinder(labels: np.ndarray, cfg: PathfinderConfig,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, S, S]`` uint8 for ``labels`` ``[N]`` (1: markers joined), and the marker
    centres ``[N, 2, 2]`` (marker, (y, x)).

    Images where a snake finds no place are redrawn in further vectorised rounds (``REDRAWS``).
    """
    n, s = labels.shape[0], cfg.image_size
    max_turn = math.radians(cfg.max_turn_deg)
    marker = marker_offsets(s)
    images = np.zeros((n, s, s), dtype=np.uint8)
    ends = np.zeros((n, 2, 2), dtype=np.int64)
    todo = np.arange(n)
    for _ in range(REDRAWS):
        if todo.size == 0:
            return images, ends
        m = todo.size
        ink = np.zeros((m, s, s), dtype=bool)  # pixels of every snake and marker
        taken = np.zeros((m, s, s), dtype=bool)  # within CLEARANCE - 1 of a finished snake
        ok = np.ones(m, dtype=bool)
        targets = []
        lengths = [cfg.contour_length] * 2 + [cfg.distractor_length] * cfg.n_distractors
        for i, length in enumerate(lengths):
            pix, ok = _snake(taken, length, marker if i < 2 else None, max_turn, rng, ok)
            foot = pix
            if i < 2:  # the two target snakes keep room for markers on both ends
                targets.append(pix)
                discs = (pix[:, [0, -1], None, :] + marker).reshape(m, -1, 2)
                foot = np.concatenate([discs, pix], 1)
            _mark(ink, pix, np.zeros((1, 2), dtype=np.int64))
            _mark(taken, foot, HALO)
        # markers: label 1 -> both ends of target 0. Label 0 -> an end of target 0 and one of
        # target 1, the pair whose distance is closest to target 0's own end-to-end distance, so
        # that the marker distance alone hardly tells the classes apart
        lab = labels[todo]
        t0, t1 = targets[0][:, [0, -1]], targets[1][:, [0, -1]]  # [M, 2 ends, 2]
        flip = rng.random(m) < 0.5  # which end of target 0 holds marker a (label 1)
        own = np.linalg.norm(t0[:, 0] - t0[:, 1], axis=-1)  # [M]
        cross = np.linalg.norm(t0[:, :, None] - t1[:, None, :], axis=-1).reshape(m, 4)  # [M, 4]
        pair = np.abs(cross - own[:, None]).argmin(1)  # end of target 0 = pair // 2, of 1: pair % 2
        rows = np.arange(m)
        a = np.where((lab == 1)[:, None], t0[rows, flip.astype(np.int64)], t0[rows, pair // 2])
        b = np.where((lab == 1)[:, None], t0[rows, 1 - flip.astype(np.int64)], t1[rows, pair % 2])
        _mark(ink, np.stack([a, b], 1), marker)
        level = rng.integers(160, 256, m)  # one ink intensity per image
        images[todo[ok]] = np.where(ink[ok], level[ok, None, None], 0).astype(np.uint8)
        ends[todo[ok]] = np.stack([a, b], 1)[ok]
        todo = todo[~ok]
    raise RuntimeError(f"Pathfinder: could not place the snakes in {todo.size} images; lower "
                       "contour_length, n_distractors or distractor_length, or raise image_size")


def _examples(cfg: PathfinderConfig, n: int, rng: np.random.Generator) -> Batch:
    labels = balanced_labels(n, 2, rng)
    images, _ = draw_pathfinder(labels, cfg, rng)
    return to_batch(images, labels)


def make_pathfinder(cfg: PathfinderConfig, seed: int = 0) -> TaskData:
    """Deterministic Pathfinder train/test sets for ``seed``: ``[N, image_size**2 + 1]`` tokens."""
    train = _examples(cfg, cfg.num_train, np.random.default_rng([seed, 0]))
    test = _examples(cfg, cfg.num_test, np.random.default_rng([seed, 1]))
    return TaskData(train=train, test=test, vocab_size=CLASS0 + 2, seq_len=cfg.seq_len)
