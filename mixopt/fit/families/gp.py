"""gp: linear plus a Gaussian process on its residuals, with one length scale per domain (ARD):
smooth interactions of any shape, and a domain that does not matter gets a long scale."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from mixopt.fit.families.base import MixtureModel
from mixopt.fit.families.linear import fit_linear

MAX_RUNS_FOR_GP = 300  # exact GP: cubic in runs; above this auto leaves it out (trees have the runs they need)
GP_MAX_ITER = 60  # marginal-likelihood steps: the fit is a second or less up to ~300 runs


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
class GPModel(MixtureModel):
    gps: dict[str, GaussianProcess]  # metric -> its process

    kind = "gp"
    chunked = True  # mixtures x runs temporaries
    # The marginal-likelihood search is most of an inner selection's time: inner folds keep the
    # outer fold's hyperparameters.
    warm_inner = True

    @classmethod
    def fit_terms(cls, X, metrics, terms, seed, start, members):
        return cls(terms, {m: _fit_gp(X, metrics[m], seed, start.gps[m] if start else None) for m in terms})

    @classmethod
    def offered(cls, n_runs, domains, metrics):
        return n_runs <= MAX_RUNS_FOR_GP

    @classmethod
    def runs_wanted(cls, domains, members=()):
        return 4 * domains

    def predict_metric(self, metric, X):
        return self.gps[metric].predict(np.atleast_2d(X))

    def term_gradient(self, metric, a, w):
        return a * self.gps[metric].gradient(w)


def _fit_gp(X: np.ndarray, y: np.ndarray, seed: int, start: GaussianProcess | None = None) -> GaussianProcess:
    """The linear fit, then an RBF-ARD process on its standardized residuals: hyperparameters by
    maximum marginal likelihood (capped at GP_MAX_ITER steps), or `start`'s kept as they are."""
    from scipy.linalg import cho_factor, cho_solve
    from scipy.optimize import minimize

    coef = fit_linear(X, y)
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
