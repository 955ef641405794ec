"""torchglm: GLM (General Language Model, autoregressive blank infilling) on current PyTorch."""

__version__ = "0.1.0"
