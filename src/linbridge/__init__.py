"""linbridge: interpret nonlinear neural encoding models."""
__version__ = "0.1.0"
