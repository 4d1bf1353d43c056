"""Two PNGs per fit: out-of-fold predicted vs measured objective, and each domain's weight effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixopt.core.mixtures import project_to_bounds
from mixopt.fit.regress import score_text


def plot_fit(out: Path, swarm, rec, model) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, oof = swarm.y, rec.cv.oof
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.scatter(y, oof, s=12, alpha=0.7)
    lo, hi = float(min(y.min(), oof.min())), float(max(y.max(), oof.max()))
    ax.plot([lo, hi], [lo, hi], lw=1, color="gray")
    ax.set_xlabel("measured objective")
    ax.set_ylabel(f"predicted out-of-fold ({rec.cv.folds}-fold)")
    ax.set_title(f"{rec.model}: Spearman {score_text(rec.cv.spearman)}, R² {score_text(rec.cv.r2)}", fontsize=10)
    fig.tight_layout()
    first = out / "predicted_vs_measured.png"
    _save(fig, first)

    # Each domain's weight swept from its lower to its upper bound, the other domains keeping their
    # proportions from the recommendation (then projected back into the bounds).
    d = len(swarm.domains)
    fig, panels = domain_panels(d, 4, (3, 2.4), 110)
    w0 = rec.weights
    for i, name in enumerate(swarm.domains):
        ax = panels[i]
        W = weight_sweep(w0, i, swarm.bounds.lower[i], swarm.bounds.upper[i], 41, swarm.bounds)
        ax.plot(W[:, i], model.predict(W), lw=1.5)
        ax.axvline(w0[i], color="gray", lw=1, ls="--")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.supxlabel("domain weight (others keep the recommendation's proportions)", fontsize=9)
    fig.supylabel("predicted objective", fontsize=9)
    fig.tight_layout()
    second = out / "weight_effects.png"
    _save(fig, second)
    return [first, second]


def _save(fig, path: Path) -> None:
    import os
    import tempfile

    import matplotlib.pyplot as plt

    from mixopt.core.workspace import process_umask

    # A temp name of its own: fits running at once on one workspace never write each other's file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.png")
    os.fchmod(fd, 0o666 & ~process_umask())  # the mode open() would give, not mkstemp's 0600
    os.close(fd)
    try:
        fig.savefig(tmp)
        Path(tmp).replace(path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


def weight_sweep(w0: np.ndarray, i: int, low: float, high: float, n: int, bounds) -> np.ndarray:
    """n mixtures with domain i's weight from low to high, the other domains keeping their
    proportions in w0, each projected back into `bounds`: the rows of a per-domain effect curve."""
    d = len(w0)
    rest = np.delete(w0, i)
    rest = rest / rest.sum() if rest.sum() > 0 else np.full(d - 1, 1 / (d - 1))
    return project_to_bounds(np.array([np.insert(rest * (1 - g), i, g) for g in np.linspace(low, high, n)]), bounds)


def domain_panels(d: int, most_cols: int, panel: tuple[float, float], dpi: int):
    """A figure with one panel (of `panel` inches) per domain, at most `most_cols` to a row: (figure,
    the d axes)."""
    import matplotlib.pyplot as plt

    cols = min(most_cols, d)
    rows = -(-d // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), dpi=dpi, squeeze=False)
    for j in range(d, rows * cols):  # the last row's unused panels stay blank
        axes[j // cols][j % cols].axis("off")
    return fig, [axes[i // cols][i % cols] for i in range(d)]
