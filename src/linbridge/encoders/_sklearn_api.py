"""Estimator shells: RidgeEncoder (himalaya) and MLPEncoder (torch)."""
from __future__ import annotations

import numpy as np
import torch

from ..data.preprocessing import check_finite, check_same_samples
from ._mlp import build_mlp, train_mlp


def _check_xy(X, Y, where: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    check_same_samples(**{f"X ({where})": X, f"Y ({where})": Y})
    check_finite(X, f"X ({where})", ("sample", "feature"))
    check_finite(Y, f"Y ({where})", ("sample", "unit"))
    return X, Y


class RidgeEncoder:
    """Ridge regression with one alpha per unit chosen by cross-validation (himalaya).

    coef_ : (n_features, n_units), like himalaya. Its Jacobian is coef_.T for every sample.
    """

    def __init__(self, alphas=tuple(np.logspace(-2, 7, 19)), cv: int = 5,
                 n_targets_batch: int | None = None, force_cpu: bool = True):
        self.alphas = alphas
        self.cv = cv
        self.n_targets_batch = n_targets_batch
        self.force_cpu = force_cpu

    def fit(self, X, Y, X_val=None, Y_val=None) -> "RidgeEncoder":
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV

        X, Y = _check_xy(X, Y, "ridge fit")
        if X_val is not None:  # cross-validation picks alpha; validation data join the fit
            Xv, Yv = _check_xy(X_val, Y_val, "ridge validation")
            X, Y = np.concatenate([X, Xv]), np.concatenate([Y, Yv])
        set_backend("numpy", on_error="warn")
        params = {"n_targets_batch": self.n_targets_batch} if self.n_targets_batch else None
        X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
        if X.shape[0] < X.shape[1]:
            # fewer samples than features: the dual (linear-kernel) problem is the cheaper one
            from himalaya.kernel_ridge import KernelRidgeCV

            model = KernelRidgeCV(alphas=np.asarray(self.alphas), kernel="linear", cv=self.cv,
                                  solver_params=params, force_cpu=self.force_cpu)
            model.fit(X64, Y64)
            self.coef_ = np.asarray(model.get_primal_coef(), dtype=np.float64)
        else:
            model = RidgeCV(alphas=np.asarray(self.alphas), cv=self.cv, solver_params=params,
                            force_cpu=self.force_cpu)
            model.fit(X64, Y64)
            self.coef_ = np.asarray(model.coef_, dtype=np.float64)
        self.best_alphas_ = np.asarray(model.best_alphas_)
        return self

    def predict(self, X) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) @ self.coef_).astype(np.float32)

    def jacobian_matrix(self) -> np.ndarray:
        """(n_units, n_features): the same for every sample."""
        return self.coef_.T


class MLPEncoder:
    """The paper's nonlinear encoder (Linear-ReLU-Linear, width 1024, no biases) and family.

    activation='identity' gives the linear control. Trained with AdamW on MSE and early
    stopping on validation MSE (a deep copy of the best weights is kept).
    Fitted: module_ (torch.nn.Sequential, eval mode), best_epoch_, history_.
    """

    def __init__(self, hidden: int = 1024, depth: int = 1, activation: str = "relu",
                 bias: bool = False, residual_blocks: int = 0, lr: float = 1e-3,
                 weight_decay: float = 1e-2, batch_size: int = 128, max_epochs: int = 200,
                 patience: int = 8, seed: int = 0, progress: bool = True):
        self.hidden = hidden
        self.depth = depth
        self.activation = activation
        self.bias = bias
        self.residual_blocks = residual_blocks
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.progress = progress

    def build(self, n_features: int, n_units: int) -> torch.nn.Sequential:
        torch.manual_seed(self.seed)  # seeded initial weights
        return build_mlp(n_features, n_units, self.hidden, self.depth, self.activation,
                         self.bias, self.residual_blocks)

    def fit(self, X, Y, X_val, Y_val, checkpoint=None) -> "MLPEncoder":
        X, Y = _check_xy(X, Y, "encoder fit")
        X_val, Y_val = _check_xy(X_val, Y_val, "encoder validation")
        if X_val.shape[1] != X.shape[1]:
            raise ValueError(f"validation has {X_val.shape[1]} features, training {X.shape[1]}")
        self.module_ = self.build(X.shape[1], Y.shape[1])
        res = train_mlp(self.module_, X, Y, X_val, Y_val, lr=self.lr,
                        weight_decay=self.weight_decay, batch_size=self.batch_size,
                        max_epochs=self.max_epochs, patience=self.patience, seed=self.seed,
                        progress=self.progress, checkpoint=checkpoint)
        self.best_epoch_ = res.best_epoch
        self.best_val_loss_ = res.best_val_loss
        self.history_ = res.history
        self.stopped_early_ = res.stopped_early
        return self

    def load_module(self, n_features: int, n_units: int, state_dict: dict) -> "MLPEncoder":
        self.module_ = self.build(n_features, n_units)
        self.module_.load_state_dict(state_dict)
        self.module_.eval()
        return self

    def predict(self, X) -> np.ndarray:
        self.module_.eval()
        with torch.no_grad():
            return self.module_(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy()
