"""Encoding models: ridge (himalaya) and the MLP family with early stopping."""
from ._mlp import ACTIVATIONS, Residual, build_mlp, make_activation, train_mlp
from ._sklearn_api import MLPEncoder, RidgeEncoder

__all__ = ["ACTIVATIONS", "Residual", "build_mlp", "make_activation", "train_mlp",
           "MLPEncoder", "RidgeEncoder"]
