"""Linear maps between embedding spaces, and fitting them: ridge or Procrustes, scored by held-out R² and CKA.

The maths of backward-compatible embeddings (the design: `export.fit_maps`); numpy only, so the
runtime composes maps with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_CALIBRATION_FRAMES = 32  # below this a held-out R² means little: no calibration set is made
HOLDOUT_EVERY = 4  # every 4th calibration frame is held out to measure the fit
METHODS = ("ridge", "procrustes")


@dataclass(frozen=True)
class LinearMap:
    """`apply(z) = z @ matrix + bias`: (N, D_in) float32 → (N, D_out) float32."""

    matrix: np.ndarray  # (D_in, D_out) float32
    bias: np.ndarray  # (D_out,) float32

    @property
    def dims(self) -> tuple[int, int]:
        return int(self.matrix.shape[0]), int(self.matrix.shape[1])

    def apply(self, z: np.ndarray) -> np.ndarray:
        return z @ self.matrix + self.bias

    def then(self, older: "LinearMap") -> "LinearMap":
        """This map followed by `older` (this one's output space is `older`'s input space), as one map:
        (z A + a) B + b = z (A B) + (a B + b). Composed in float64, stored as float32."""
        a, b = self.matrix.astype(np.float64), older.matrix.astype(np.float64)
        matrix = a @ b
        bias = self.bias.astype(np.float64) @ b + older.bias.astype(np.float64)
        return LinearMap(matrix.astype(np.float32), bias.astype(np.float32))


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> LinearMap:
    """Least squares with a ridge and a bias: argmin_W ||Xc W - Yc||² + λ||W||², b = ȳ - x̄ W.

    x: (N, D_in), y: (N, D_out). λ = `ridge` × trace(Xcᵀ Xc) / D_in, so the penalty is relative to
    the features' scale (1e-3 barely shrinks a well-posed fit, and keeps N < D_in solvable).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * max(np.trace(gram) / gram.shape[0], 1e-12)
    matrix = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return LinearMap(matrix.astype(np.float32), (my - mx @ matrix).astype(np.float32))


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> LinearMap:
    """Orthogonal Procrustes with scale and bias: W = s R, R orthogonal (semi-orthogonal when D_in ≠ D_out).

    Source: Schönemann (1966) / Gower & Dijksterhuis, "Procrustes Problems" (2004): with centred
    X, Y and Xcᵀ Yc = U Σ Vᵀ, R = U Vᵀ minimises ||Xc R - Yc||_F and s = tr(Σ) / ||Xc||_F².
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    u, sigma, vt = np.linalg.svd(xc.T @ yc, full_matrices=False)
    scale = sigma.sum() / max(float((xc**2).sum()), 1e-12)
    matrix = scale * (u @ vt)
    return LinearMap(matrix.astype(np.float32), (my - mx @ matrix).astype(np.float32))


def fit_method(x: np.ndarray, y: np.ndarray, method: str, ridge: float = 1e-3) -> LinearMap:
    if method == "ridge":
        return fit_ridge(x, y, ridge)
    if method == "procrustes":
        return fit_procrustes(x, y)
    raise ValueError(f"unknown compatibility map method {method!r}; allowed: {', '.join(METHODS)}")


def r2_score(predicted: np.ndarray, target: np.ndarray) -> float:
    """Fraction of the target's variance (summed over dimensions) the prediction explains: 1 - SS_res / SS_tot.
    1 is a perfect map, 0 no better than the mean; negative is worse than the mean."""
    target = np.asarray(target, np.float64)
    residual = float(((target - predicted) ** 2).sum())
    total = float(((target - target.mean(0)) ** 2).sum())
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else float("-inf"))


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same N inputs, x: (N, D1), y: (N, D2), in [0, 1].

    Kornblith et al., ICML 2019, "Similarity of Neural Network Representations Revisited", eq. for
    linear CKA on centred X, Y: ||Yᵀ X||_F² / (||Xᵀ X||_F ||Yᵀ Y||_F). Invariant to orthogonal
    transforms and isotropic scaling, so it measures drift a linear map cannot undo only partly;
    1 means the same space up to rotation and scale.
    """
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    y = np.asarray(y, np.float64) - np.mean(y, 0)
    denominator = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / denominator) if denominator > 0 else 0.0


@dataclass(frozen=True)
class CompatFit:
    """A map new → previous and how well it holds on calibration frames it was not fit on."""

    linear: LinearMap
    method: str
    r2: float  # of the map fit without the held-out frames, measured on them
    cka: float  # linear CKA of the two versions' embeddings on the held-out frames
    fit_frames: int
    holdout_frames: int


def fit_compat(new: np.ndarray, previous: np.ndarray, method: str = "ridge", ridge: float = 1e-3) -> CompatFit:
    """Fit a map from `new` (N, D_new) to `previous` (N, D_prev) embeddings of the same N frames.

    Every `HOLDOUT_EVERY`-th frame is held out: a map fit on the others is scored there (R²), and
    CKA is measured there. The map returned is then refit on all N frames (more data, same method).
    """
    new, previous = np.asarray(new, np.float64), np.asarray(previous, np.float64)
    if new.shape[0] != previous.shape[0] or new.shape[0] < MIN_CALIBRATION_FRAMES:
        raise ValueError(
            f"need the same ≥ {MIN_CALIBRATION_FRAMES} frames on both sides, got {new.shape[0]} and {previous.shape[0]}"
        )
    held = np.zeros(len(new), dtype=bool)
    held[::HOLDOUT_EVERY] = True
    trial = fit_method(new[~held], previous[~held], method, ridge)
    r2 = r2_score(trial.apply(new[held]), previous[held])
    cka = linear_cka(new[held], previous[held])
    linear = fit_method(new, previous, method, ridge)
    return CompatFit(linear, method, r2, cka, int((~held).sum()), int(held.sum()))
