"""Dataset statistics for exploration: image sizes and mask composition."""
from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .images import image_size
from .masks import IGNORE_ID, read_mask


def class_counts(samples: Sequence, num_classes: int) -> np.ndarray:
    """Number of samples per class label (labels -1 are not counted)."""
    counts = Counter(s.label for s in samples if s.label >= 0)
    return np.array([counts.get(k, 0) for k in range(num_classes)])


def image_sizes(samples: Sequence) -> np.ndarray:
    """(height, width) of every readable image, from the file headers only; unreadable files are reported."""
    def one(s) -> tuple[int, int] | str:
        try:
            return image_size(s.image)
        except (OSError, ValueError) as e:  # ImageLoadError is a ValueError
            return str(e)

    with ThreadPoolExecutor() as pool:
        results = list(pool.map(one, samples))
    problems = [r for r in results if isinstance(r, str)]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        warnings.warn(f"{len(problems)} of {len(results)} images are unreadable and left out of the sizes: "
                      + "; ".join(problems[:3]) + more, stacklevel=2)
    return np.array([r for r in results if not isinstance(r, str)], dtype=np.int64).reshape(-1, 2)


def mask_fractions(samples: Sequence) -> dict[str, np.ndarray]:
    """Per labeled mask: the fraction of pixels that are object, background and ignore band."""
    def one(s) -> tuple[float, float, float]:
        ids = read_mask(s.mask)
        n = ids.size
        ignore = float((ids == IGNORE_ID).sum()) / n
        background = float((ids == 0).sum()) / n
        return 1.0 - ignore - background, background, ignore

    with ThreadPoolExecutor() as pool:
        rows = np.array(list(pool.map(one, [s for s in samples if s.mask is not None])), dtype=np.float64)
    rows = rows.reshape(-1, 3)
    return {"object": rows[:, 0], "background": rows[:, 1], "ignore": rows[:, 2]}
