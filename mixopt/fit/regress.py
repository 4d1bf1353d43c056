"""Regressions from mixture weights to scores, judged by how well they rank unseen mixtures.

Each metric (e.g. held-out BPB of one domain) gets its own fit; the objective is the weighted sum
of the metric predictions. The families:

- linear:    m(w) = coef . w. Weights sum to 1, so coef[d] is the score of the pure-d mixture.
- loglinear: m(w) = exp(c) + exp(w . t) (Olmix's default), ridge-regularized towards a flat start
  so it is stable out-of-fold from ~10 runs: a positive floor plus a convex, monotone term.
- law:       m(w) = c + exp(w . t), the Data Mixing Laws' c + k exp(sum t_j r_j) (with sum r = 1,
  k folds into t): the same shape with a free floor and no regularization, fitted from several
  starts. Wants more runs than loglinear; better when it has them.
- quadratic: m(w) = a . w + sum_{i<j} b_ij w_i w_j (Scheffe's quadratic mixture model): linear
  plus every pairwise interaction, the interactions ridge-penalized with the penalty chosen by
  generalized cross-validation. RegMix's paper ranks it above linear.
- logweight: m(w) = a + b . log(w + eps): linear in log-weights, so the first share of a domain
  counts most (diminishing returns); b ridge-penalized with the penalty chosen by generalized
  cross-validation. On small published sweeps (26-42 runs), least squares in log(w + 1e-3) ranked
  held-out mixtures at Spearman 0.76-0.93 where auto over the other families reached 0.34-0.49
  (issue 27). Convex exactly when every domain's coefficient in the objective is <= 0 (more of a
  domain never hurts), the usual case for losses.
- gp:        linear plus a Gaussian process on its residuals, with one length scale per domain
  (ARD): smooth interactions of any shape, and a domain that does not matter gets a long scale.
- gbm:       gradient-boosted trees (LightGBM, as RegMix uses), RegMix's choice for
  hundreds of runs: no shape assumed, so it captures interactions, but it is piecewise constant,
  so its optimum is found by simulation (optimize.py), not by a solver.
- multitask: one quadratic model across every metric of the table (the objective's and any
  fitted at weight 0): a ridge with one shared penalty, then reduced to the rank (chosen by inner
  cross-validation) that the metrics share. Correlated evals lend each other their runs: a noisy
  metric is predicted through the structure the others show. Predicts like quadratic.
- ensemble:  the mean of the best few of the above (by cross-validated Spearman).
- auto:      k-fold cross-validated ranking and error pick among all of them (select_model); the
  pick is itself judged by nested cross-validation (cross_validate_selection).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import least_squares, minimize
from scipy.stats import spearmanr
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold

from mixopt.evals.objective import objective_of

MODELS = ("linear", "loglinear", "law", "quadratic", "logweight", "multitask", "gp", "gbm", "ensemble")
SHARED = ("multitask",)  # families fit jointly across all the metrics (the rest: one model per metric)
LOGLINEAR_RIDGE = 0.05  # pulls t towards its starting point: stable fits from ~10 runs
# Fewer, larger steps than RegMix's notebook (1000 x 0.01): the same ranking on its 1M test set
# (Spearman 0.990 vs 0.990) at a seventh of the time, which CV and the bootstrap multiply.
GBM_PARAMS = dict(objective="regression", n_estimators=150, learning_rate=0.1, num_leaves=15, min_child_samples=5,
                  reg_lambda=1.0, verbose=-1, deterministic=True, force_row_wise=True, n_jobs=1)
MIN_RUNS_FOR_GBM = 30  # below this, trees memorize; auto does not consider gbm
MAX_RUNS_FOR_GP = 300  # exact GP: cubic in runs; above this auto leaves it out (trees have the runs they need)
GP_MAX_ITER = 60  # marginal-likelihood steps: the fit is a second or less up to ~300 runs
ENSEMBLE_SIZE = 3  # the ensemble averages the best three other families
# Inner folds of auto's nested CV (cross_validate_selection): five up to SMALL_SWARM runs, where each
# inner fit sees few runs and three folds made the nested figure 0.03 more pessimistic against truly
# held-out Spearman (bench/fit_honesty.py, 48 synthetic swarms of 24-48 runs: -0.099 vs -0.126 bias,
# weak-fit warnings on strong fits 10% vs 17%); three above, where the inner pick is stable and fits
# are slow (RegMix's 512 runs: auto 2.3x plain CV's time with three, 3.2x with five).
SMALL_SWARM = 100
WARM_INNER = ("gp", "law")  # families whose inner-fold fits keep the outer fold's hyperparameters
CHUNK = 10_000  # mixtures predicted at once by the families with large temporaries
RIDGE_GRID = np.logspace(-6, 1, 15)  # quadratic's interaction penalty, relative to the largest singular value^2
# logweight's floor inside the log: published swarms round weights to 1e-3 (RegMix), so an absent
# domain and a 0.1% one are apart by log 2, not by infinity
LOGWEIGHT_EPS = 1e-3


@dataclass(frozen=True)
class GaussianProcess:
    """Linear mean plus an RBF-ARD process on its residuals; fitted hyperparameters kept for refits."""

    coef: np.ndarray  # the linear mean
    X: np.ndarray  # the runs it conditions on
    alpha: np.ndarray  # K^-1 (residual / scale)
    length: np.ndarray  # per-domain length scale
    amplitude: float  # signal variance, in units of scale^2
    noise: float  # noise variance, same units
    scale: float  # residual standard deviation (the process is fit on standardized residuals)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef + self.scale * (self._k(X) @ self.alpha)

    def gradient(self, w: np.ndarray) -> np.ndarray:
        k = self._k(w[None, :])[0]
        return self.coef - self.scale * ((k * self.alpha) @ ((w - self.X) / self.length ** 2))

    def _k(self, X: np.ndarray) -> np.ndarray:
        A, B = X / self.length, self.X / self.length
        d2 = np.maximum((A ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None, :] - 2 * A @ B.T, 0.0)
        return self.amplitude * np.exp(-0.5 * d2)


@dataclass(frozen=True)
class MixtureModel:
    kind: str
    terms: dict[str, float]  # metric -> signed weight in the objective
    params: dict[str, np.ndarray] = field(default_factory=dict)  # linear coef, [floor, t_1..t_d], or [a, b_ij]
    trees: dict = field(default_factory=dict)  # metric -> fitted gbm
    gps: dict = field(default_factory=dict)  # metric -> GaussianProcess
    members: tuple = ()  # ensemble: the MixtureModels averaged

    @property
    def smooth(self) -> bool:
        """Differentiable, so a solver finds its optimum; trees are piecewise constant."""
        if self.kind == "ensemble":
            return all(m.smooth for m in self.members)
        return self.kind != "gbm"

    @property
    def member_kinds(self) -> list[str]:
        return [m.kind for m in self.members]

    def predict_metric(self, metric: str, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        if self.kind == "ensemble":
            return np.mean([m.predict_metric(metric, X) for m in self.members], axis=0)
        if self.kind == "gbm":
            return self.trees[metric].predict(X, num_threads=os.cpu_count() or 1)
        if self.kind == "gp":
            return self.gps[metric].predict(X)
        p = self.params[metric]
        if self.kind == "scaling":
            return scaling_law(p, X)
        if self.kind == "linear":
            return X @ p
        if self.kind == "logweight":
            return p[0] + np.log(X + LOGWEIGHT_EPS) @ p[1:]
        if self.kind in ("quadratic", "multitask"):
            i, j = np.triu_indices(X.shape[1], 1)
            return X @ p[:X.shape[1]] + (X[:, i] * X[:, j]) @ p[X.shape[1]:]
        floor = np.exp(p[0]) if self.kind == "loglinear" else p[0]
        return floor + np.exp(np.clip(X @ p[1:], -50, 50))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The objective (lower is better)."""
        X = np.atleast_2d(X)
        if len(X) > CHUNK and self.kind in ("quadratic", "multitask", "gp", "ensemble"):
            # runs x pairs (quadratic) or mixtures x runs (gp) temporaries: 100k simulated mixtures
            # at 32 domains would need ~0.4 GB at once
            return np.concatenate([self.predict(X[i:i + CHUNK]) for i in range(0, len(X), CHUNK)])
        if self.kind == "ensemble":
            return np.mean([m.predict(X) for m in self.members], axis=0)
        return sum(a * self.predict_metric(m, X) for m, a in self.terms.items())

    def gradient(self, w: np.ndarray) -> np.ndarray:
        if self.kind == "ensemble":
            return np.mean([m.gradient(w) for m in self.members], axis=0)
        g = np.zeros_like(w, dtype=float)
        for m, a in self.terms.items():
            if self.kind == "gp":
                g += a * self.gps[m].gradient(w)
                continue
            p = self.params[m]
            if self.kind == "scaling":
                g += a * scaling_law_gradient(p, w)
            elif self.kind == "linear":
                g += a * p
            elif self.kind == "logweight":
                g += a * p[1:] / (w + LOGWEIGHT_EPS)
            elif self.kind in ("quadratic", "multitask"):
                d = len(w)
                B = np.zeros((d, d))
                B[np.triu_indices(d, 1)] = p[d:]
                g += a * (p[:d] + (B + B.T) @ w)
            else:
                g += a * np.exp(np.clip(w @ p[1:], -50, 50)) * p[1:]
        return g

    def linear_coef(self) -> np.ndarray:
        """The objective's coefficients, for a linear model."""
        return sum(a * self.params[m] for m, a in self.terms.items())

    def convex(self) -> bool:
        """Every term convex (exp terms with positive weight, or linear): SLSQP's optimum is global."""
        if self.kind in ("quadratic", "multitask", "gp", "ensemble", "gbm"):
            return False
        if self.kind == "scaling":
            return all(a > 0 for a in self.terms.values())  # linear + exp terms
        if self.kind == "logweight":  # b . log(w + eps) is convex iff every b_j <= 0 (log is concave)
            return bool(np.all(sum(a * self.params[m][1:] for m, a in self.terms.items()) <= 0))
        return self.kind == "linear" or all(a > 0 for a in self.terms.values())


def scaling_law(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The joint law at one size: p = [e, a, b, alpha, beta, ln(N/N0), ln(D/D0), (m)] (scaling.py):
    X e + exp(X a - alpha ln N) + exp(X b - beta ln D) (+ exp(X m): the pooled form's mixture effect)."""
    d = X.shape[1]
    e, a, b = p[:d], p[d:2 * d], p[2 * d:3 * d]
    alpha, beta, ln_n, ln_d = p[3 * d:3 * d + 4]
    out = X @ e + np.exp(np.clip(X @ a - alpha * ln_n, -50, 50)) + np.exp(np.clip(X @ b - beta * ln_d, -50, 50))
    if len(p) > 3 * d + 4:
        out = out + np.exp(np.clip(X @ p[3 * d + 4:], -50, 50))
    return out


def scaling_law_gradient(p: np.ndarray, w: np.ndarray) -> np.ndarray:
    d = len(w)
    e, a, b = p[:d], p[d:2 * d], p[2 * d:3 * d]
    alpha, beta, ln_n, ln_d = p[3 * d:3 * d + 4]
    g = (e + a * np.exp(np.clip(w @ a - alpha * ln_n, -50, 50))
         + b * np.exp(np.clip(w @ b - beta * ln_d, -50, 50)))
    if len(p) > 3 * d + 4:
        m = p[3 * d + 4:]
        g = g + m * np.exp(np.clip(w @ m, -50, 50))
    return g


@dataclass(frozen=True)
class CrossValidation:
    spearman: float  # rank correlation of out-of-fold predictions with measured objective
    r2: float
    folds: int
    oof: np.ndarray  # out-of-fold prediction for every run
    fold_spearman: np.ndarray = field(default_factory=lambda: np.zeros(0))  # within each test fold
    members: tuple[str, ...] = ()  # ensemble: which families it averages


def fit_model(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
              seed: int = 0, start: MixtureModel | None = None, members: tuple[str, ...] = ()) -> MixtureModel:
    """Fit each metric of the objective; `start` (a fit of the same kind on similar data, e.g. the
    full swarm for a bootstrap replicate) warm-starts the least-squares families and fixes a GP's
    hyperparameters; an ensemble fits each of `members` (or `start`'s). A metric at weight 0 is
    fit only by the shared families (SHARED), which learn from every metric in `metrics`."""
    if kind in SHARED:
        return MixtureModel(kind, dict(terms), _fit_multitask(X, metrics))
    terms = {m: a for m, a in terms.items() if a}
    if kind == "ensemble":
        starts = start.members if start is not None and start.kind == "ensemble" else (None,) * len(members)
        kinds = [s.kind for s in starts] if start is not None and start.kind == "ensemble" else list(members)
        if not kinds:
            raise ValueError("an ensemble needs its member families")
        return MixtureModel(kind, dict(terms), members=tuple(
            fit_model(k, X, metrics, terms, seed, s) for k, s in zip(kinds, starts)))
    if kind == "gbm":
        return MixtureModel(kind, dict(terms), trees={m: _fit_gbm(X, metrics[m], seed) for m in terms})
    if kind == "linear":
        return MixtureModel(kind, dict(terms), {m: _fit_linear(X, metrics[m]) for m in terms})
    if kind == "quadratic":
        return MixtureModel(kind, dict(terms), {m: _fit_quadratic(X, metrics[m]) for m in terms})
    if kind == "logweight":
        return MixtureModel(kind, dict(terms), {m: _fit_logweight(X, metrics[m]) for m in terms})
    warm = start is not None and start.kind == kind
    if kind == "gp":
        return MixtureModel(kind, dict(terms), gps={m: _fit_gp(X, metrics[m], seed, start.gps[m] if warm else None)
                                                    for m in terms})
    fit_one = _fit_loglinear if kind == "loglinear" else _fit_law
    return MixtureModel(kind, dict(terms), {m: fit_one(X, metrics[m], start.params[m] if warm else None)
                                            for m in terms})


def _fit_linear(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(X, y, rcond=None)[0]


def _fit_quadratic(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[a, b]: y ~ X a + P b with P the pairwise products; only b is penalized (a carries the level),
    its penalty picked by generalized cross-validation over RIDGE_GRID."""
    return _quadratic_ridge(X, y[:, None])[:, 0]


def _fit_logweight(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[a, b]: y ~ a + log(X + eps) b, b ridge-penalized (a unpenalized: the data are centred),
    the penalty picked by generalized cross-validation over RIDGE_GRID and no penalty at all."""
    L = np.log(X + LOGWEIGHT_EPS)
    mu_L, mu_y = L.mean(axis=0), float(y.mean())
    U, s, Vt = np.linalg.svd(L - mu_L, full_matrices=False)
    keep = s > 1e-10 * max(s.max(), 1e-300)
    U, s, Vt = U[:, keep], s[keep], Vt[keep]
    Uty = U.T @ (y - mu_y)
    n, best = len(y), None
    for lam in np.r_[0.0, RIDGE_GRID * max(s.max() ** 2, 1e-12)]:
        f = s ** 2 / (s ** 2 + lam)
        resid = (y - mu_y) - U @ (f * Uty)
        gcv = float(resid @ resid) / max(n - 1 - f.sum(), 1e-3) ** 2  # 1: the intercept
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    b = Vt.T @ (s / (s ** 2 + best[1]) * Uty)
    return np.r_[mu_y - mu_L @ b, b]


def _pairs(X: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(X.shape[1], 1)
    return X[:, i] * X[:, j]


def _quadratic_ridge(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Coefficients [a; b] (features x columns of Y) of Y ~ X a + P b, one interaction penalty for
    every column, chosen by generalized cross-validation summed over the columns."""
    n = X.shape[0]
    P = _pairs(X)
    U0, s0, _ = np.linalg.svd(X, full_matrices=False)
    U0 = U0[:, s0 > 1e-10 * s0.max()]
    proj = lambda M: M - U0 @ (U0.T @ M)  # noqa: E731  (remove what the linear part explains)
    Q, R = proj(P), proj(Y)
    U, s, Vt = np.linalg.svd(Q, full_matrices=False)
    UtR = U.T @ R
    best = None
    for lam in RIDGE_GRID * max(s.max() ** 2, 1e-12):
        f = s ** 2 / (s ** 2 + lam)
        resid = R - U @ (f[:, None] * UtR)
        dof = U0.shape[1] + f.sum()
        gcv = float((resid ** 2).sum()) / max(n - dof, 1e-3) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    lam = best[1]
    B = Vt.T @ ((s / (s ** 2 + lam))[:, None] * UtR)
    A = np.linalg.lstsq(X, Y - P @ B, rcond=None)[0]
    return np.vstack([A, B])


def _reduced(C: np.ndarray, F: np.ndarray, rank: int) -> np.ndarray:
    """C with its fitted values F @ C projected onto their top `rank` directions across the columns
    (reduced-rank regression: the columns share `rank` underlying responses)."""
    V = np.linalg.svd(F @ C, full_matrices=False)[2][:rank].T
    return C @ V @ V.T


MULTITASK_FOLDS = 5  # inner folds choosing the shared rank


def _fit_multitask(X: np.ndarray, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every metric's quadratic coefficients from one fit: standardized metrics, a shared-penalty
    ridge, reduced to the rank that predicts held-out runs best (inner k-fold, summed squared error
    over the standardized metrics; the lower rank on a tie)."""
    names = list(metrics)
    Y = np.column_stack([metrics[m] for m in names])
    mu, sd = Y.mean(axis=0), Y.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (Y - mu) / sd
    m, n = Z.shape[1], Z.shape[0]
    rank = m
    if m > 1 and n >= 2 * MULTITASK_FOLDS:
        err = np.zeros(m)
        for test in fold_indices(n, MULTITASK_FOLDS, 0):
            train = np.setdiff1d(np.arange(n), test)
            C = _quadratic_ridge(X[train], Z[train])
            F_train, F_test = (np.hstack([X[ix], _pairs(X[ix])]) for ix in (train, test))
            for r in range(1, m + 1):
                err[r - 1] += float(((F_test @ _reduced(C, F_train, r) - Z[test]) ** 2).sum())
        rank = int(np.flatnonzero(err <= err.min() * (1 + 1e-9))[0]) + 1
    C = _reduced(_quadratic_ridge(X, Z), np.hstack([X, _pairs(X)]), rank) * sd
    C[:X.shape[1]] += mu  # rows of X sum to 1: the level goes into the linear part
    return {k: C[:, i] for i, k in enumerate(names)}


def _fit_gp(X: np.ndarray, y: np.ndarray, seed: int, start: GaussianProcess | None = None) -> GaussianProcess:
    """The linear fit, then an RBF-ARD process on its standardized residuals: hyperparameters by
    maximum marginal likelihood (capped at GP_MAX_ITER steps), or `start`'s kept as they are."""
    coef = _fit_linear(X, y)
    resid = y - X @ coef
    scale = float(resid.std()) or 1.0
    z = resid / scale
    d = X.shape[1]
    if start is not None:
        length, amplitude, noise = start.length, start.amplitude, start.noise
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, WhiteKernel
        from sklearn.gaussian_process.kernels import ConstantKernel as C

        def optimizer(obj, theta0, bounds):
            res = minimize(obj, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": GP_MAX_ITER})
            return res.x, res.fun

        # Length scales start at the spread of a typical mixture's weights; a domain that does not
        # matter drifts to the upper bound (the process ignores it).
        kernel = C(0.5, (1e-3, 1e2)) * RBF(np.full(d, 0.5), (1e-2, 1e3)) + WhiteKernel(0.1, (1e-6, 1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            g = GaussianProcessRegressor(kernel, optimizer=optimizer, normalize_y=False, random_state=seed).fit(X, z)
        k = g.kernel_
        amplitude, length, noise = float(k.k1.k1.constant_value), np.atleast_1d(k.k1.k2.length_scale), float(k.k2.noise_level)
    proc = GaussianProcess(coef, X, np.zeros(len(y)), np.asarray(length, float), amplitude, noise, scale)
    K = proc._k(X) + (noise + 1e-10) * np.eye(len(y))
    alpha = cho_solve(cho_factor(K, lower=True), z)
    return GaussianProcess(coef, X.copy(), alpha, proc.length, amplitude, noise, scale)


def _fit_loglinear(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    floor0 = 0.5 * max(float(y.min()), 1e-6)
    t0 = np.log(max(float(y.mean()) - floor0, 1e-6))  # the ridge's centre stays the flat start
    p0 = np.r_[np.log(floor0), np.full(X.shape[1], t0)] if start is None else start

    d = X.shape[1]

    def residuals(p):
        pred = np.exp(p[0]) + np.exp(np.clip(X @ p[1:], -50, 50))
        return np.r_[pred - y, LOGLINEAR_RIDGE * (p[1:] - t0)]

    def jacobian(p):
        e = np.exp(np.clip(X @ p[1:], -50, 50))
        top = np.column_stack([np.full(len(y), np.exp(p[0])), e[:, None] * X])
        return np.vstack([top, np.column_stack([np.zeros(d), LOGLINEAR_RIDGE * np.eye(d)])])

    return least_squares(residuals, p0, jac=jacobian, method="trf", max_nfev=_max_evals(X)).x


def _fit_law(X: np.ndarray, y: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """c + exp(X t), least squares from three floors (0, half and 90% of the smallest score),
    or from `start` alone."""
    best = None
    starts = [start] if start is not None else []
    for frac in () if starts else (0.0, 0.5, 0.9):
        c0 = frac * float(y.min())
        starts.append(np.r_[c0, np.full(X.shape[1], np.log(max(float(y.mean()) - c0, 1e-6)))])
    for p0 in starts:
        res = least_squares(lambda p: p[0] + np.exp(np.clip(X @ p[1:], -50, 50)) - y, p0, method="trf",
                            jac=lambda p: np.column_stack([np.ones(len(y)), np.exp(np.clip(X @ p[1:], -50, 50))[:, None] * X]),
                            max_nfev=_max_evals(X))
        if best is None or res.cost < best.cost:
            best = res
    return best.x


def _max_evals(X: np.ndarray) -> int:
    """A cap on least-squares evaluations: a metric the shape cannot follow (e.g. a near-constant
    accuracy) would otherwise drift along a flat valley for thousands of steps, to no better fit."""
    return 30 * (X.shape[1] + 1)


def _fit_gbm(X: np.ndarray, y: np.ndarray, seed: int):
    import lightgbm

    return lightgbm.LGBMRegressor(random_state=seed, **GBM_PARAMS).fit(X, y).booster_


def candidates_for(n_runs: int, domains: int = 0, metrics: int = 1) -> tuple[str, ...]:
    """The models `auto` may pick from with this many runs (the ensemble is built from the others).
    The unregularized law needs twice as many runs as its d + 1 coefficients: with fewer, its
    least squares runs away (CV R^2 of -1e46 at 49 runs x 32 domains) after seconds of work.
    The shared (multitask) fit is offered when there are several metrics to share."""
    out = [m for m in MODELS if m != "ensemble" and (m not in SHARED or metrics > 1)]
    if n_runs < 2 * (domains + 1):
        out.remove("law")
    if n_runs < MIN_RUNS_FOR_GBM:
        out.remove("gbm")
    if n_runs > MAX_RUNS_FOR_GP:
        out.remove("gp")
    return tuple(out)


def runs_wanted(kind: str, domains: int, members: tuple[str, ...] = ()) -> int:
    """Runs below which a family is short of evidence: about three per coefficient it estimates
    for the parametric ones (a quadratic's interactions are ridge-penalized, so a third of them
    count), the trees' minimum, and the most demanding member of an ensemble."""
    d = domains
    if kind == "ensemble":
        return max((runs_wanted(k, d) for k in members), default=3 * d)
    return {"linear": 2 * d, "loglinear": 2 * (d + 1), "logweight": 2 * (d + 1), "law": 3 * (d + 1),
            "quadratic": 3 * d + d * (d - 1) // 2, "multitask": 3 * d + d * (d - 1) // 2,
            "gp": 4 * d, "gbm": max(MIN_RUNS_FOR_GBM, 10 * d)}.get(kind, 3 * d)


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """The test indices of each of k seeded folds (k capped at n); the same for every model."""
    return [test for _, test in KFold(min(folds, n), shuffle=True, random_state=seed).split(np.zeros((n, 1)))]


def cross_validate(kind: str, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float],
                   folds: int, seed: int, start: MixtureModel | None = None) -> CrossValidation:
    """k-fold (seeded, k capped at the number of runs) out-of-fold predictions of the objective;
    `start` (see fit_model) warm-starts every fold's fit."""
    y = objective_of(terms, metrics)
    oof = np.empty(len(y))
    tests = fold_indices(len(y), folds, seed)
    for test in tests:
        train = np.setdiff1d(np.arange(len(y)), test)
        model = fit_model(kind, X[train], {m: v[train] for m, v in metrics.items()}, terms, seed, start)
        oof[test] = model.predict(X[test])
    return _scored(oof, y, tests)


def _scored(oof: np.ndarray, y: np.ndarray, tests: list[np.ndarray], members: tuple[str, ...] = ()) -> CrossValidation:
    r2 = float(r2_score(y, oof)) if np.isfinite(oof).all() else float("-inf")
    per_fold = np.array([spearman(oof[t], y[t]) if len(t) > 2 else np.nan for t in tests])
    return CrossValidation(spearman(oof, y) if np.isfinite(oof).all() else float("nan"), r2, len(tests), oof,
                           per_fold, members)


def cross_validate_ensemble(cvs: dict[str, CrossValidation], y: np.ndarray, folds: int, seed: int,
                            size: int = ENSEMBLE_SIZE) -> CrossValidation | None:
    """The mean of the best `size` families' out-of-fold predictions: the ensemble's own out-of-fold
    prediction (each member was fit without the fold it predicts). None with fewer than two members."""
    ranked = sorted((k for k, v in cvs.items() if k != "ensemble" and np.isfinite(v.spearman) and v.r2 > 0),
                    key=lambda k: -cvs[k].spearman)[:size]
    if len(ranked) < 2:
        return None
    oof = np.mean([cvs[k].oof for k in ranked], axis=0)
    return _scored(oof, y, fold_indices(len(y), folds, seed), tuple(ranked))


def score_text(x: float) -> str:
    """A CV score for people: 3 decimals, and a runaway fit's R^2 (-1e46) as "< -1000", not 47 digits."""
    if x != x:
        return "nan"
    return "< -1000" if x < -1000 else f"{x:.3f}"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def tied_with_best(cvs: dict[str, CrossValidation]) -> list[str]:
    """The models whose CV Spearman is within one standard error of the best's, the error taken
    over the folds' paired differences (a model that loses on every fold by a little is not tied)."""
    scored = {k: v for k, v in cvs.items() if np.isfinite(v.spearman)}
    if not scored:
        return []
    best = max(scored, key=lambda k: scored[k].spearman)
    out = []
    for k, v in scored.items():
        diff = scored[best].fold_spearman - v.fold_spearman
        diff = diff[np.isfinite(diff)]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if scored[best].spearman - v.spearman <= se:
            out.append(k)
    return out


def select_model(cvs: dict[str, CrossValidation]) -> str:
    """Rank and error together: families that predict held-out runs worse than their mean (CV R^2
    <= 0) are out whenever one predicts better; among the rest, those tied with the best CV Spearman
    (tied_with_best), the one that ranks best fold by fold (the lowest mean rank across folds),
    then the one with the smaller error (higher CV R^2). Near-ties are not broken towards the
    simplest model: on a tie the better ranker is at least as safe. When no family beats the mean,
    the one with the smallest error: its ranks are noise, but it strays least (a runaway law once
    won on Spearman at CV R^2 -1.6e10)."""
    fitting = {k: v for k, v in cvs.items() if v.r2 > 0 and np.isfinite(v.spearman)}
    if not fitting:
        finite = [k for k, v in cvs.items() if np.isfinite(v.r2)]
        return max(finite, key=lambda k: cvs[k].r2) if finite else "linear"
    tied = tied_with_best(fitting)
    if not tied:
        return "linear"
    if len(tied) == 1:
        return tied[0]
    F = np.array([np.nan_to_num(cvs[k].fold_spearman, nan=-2.0) for k in tied])  # models x folds
    ranks = (-F).argsort(axis=0).argsort(axis=0).mean(axis=1)
    return tied[min(range(len(tied)), key=lambda i: (ranks[i], -cvs[tied[i]].r2, -cvs[tied[i]].spearman))]


def select_by_cv(kinds, X: np.ndarray, metrics: dict[str, np.ndarray], terms: dict[str, float], folds: int,
                 seed: int, starts: dict | None = None) -> tuple[str, dict[str, CrossValidation]]:
    """`auto`: every family in `kinds` cross-validated, the ensemble of the best, select_model's pick;
    `starts`: family -> a fit that warm-starts its folds."""
    y = objective_of(terms, metrics)
    cvs = {k: cross_validate(k, X, metrics, terms, folds, seed, (starts or {}).get(k)) for k in kinds}
    ensemble = cross_validate_ensemble(cvs, y, folds, seed)
    if ensemble is not None:
        cvs["ensemble"] = ensemble
    return select_model(cvs), cvs


def inner_folds(n_runs: int) -> int:
    """The inner folds auto's nested CV uses for a swarm of this many runs."""
    return 5 if n_runs <= SMALL_SWARM else 3


def cross_validate_selection(cvs: dict[str, CrossValidation], X: np.ndarray, metrics: dict[str, np.ndarray],
                             terms: dict[str, float], folds: int, seed: int,
                             inner: int | None = None) -> CrossValidation:
    """auto judged outside the CV that picks: in each outer fold, the whole selection (select_by_cv)
    rerun on the fold's training runs alone, with `inner` folds (default: inner_folds), and the fold
    predicted by the family chosen there. The outer folds are cross_validate's (same seed), so that
    prediction is the family's own out-of-fold one in `cvs`: no refit. `oof` is in the runs' order."""
    y = objective_of(terms, metrics)
    n, tests = len(y), fold_indices(len(y), folds, seed)
    inner = inner or inner_folds(n)
    offered = [k for k in cvs if k != "ensemble"]
    oof = np.empty(n)
    for test in tests:
        train = np.setdiff1d(np.arange(n), test)
        kinds = [k for k in candidates_for(len(train), X.shape[1], len(metrics)) if k in offered]
        part = {m: v[train] for m, v in metrics.items()}
        # The GP's marginal-likelihood search is ~60% of an inner selection (76 of 130 ms at 22 runs x
        # 4 domains), the law's three starts most of the rest: fit each once on the fold's training
        # runs and warm-start the inner folds from it (the GP keeps its hyperparameters). That fit saw
        # the inner test runs, never the outer fold, so the outer estimate stays honest.
        starts = {k: fit_model(k, X[train], part, terms, seed) for k in kinds if k in WARM_INNER}
        kind, inner_cvs = select_by_cv(kinds, X[train], part, terms, inner, seed, starts)
        members = inner_cvs[kind].members if kind == "ensemble" else (kind,)
        oof[test] = np.mean([cvs[k].oof[test] for k in members], axis=0)
    return _scored(oof, y, tests)
