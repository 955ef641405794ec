"""Device-specific kernels the model calls instead of torch's where torch's are slow on CPUs.

- :mod:`.half`: half-precision matrix products through fp32 GEMM on CPUs without bf16/fp16 GEMM;
- :mod:`.dropout`: cheap 16-bit dropout masks and attention with dropout a few heads at a time (CPU training);
- :mod:`.attention`: scaled dot-product attention choosing between SDPA and those paths.

GPUs and CPUs with half-precision hardware go straight to torch's kernels. Nothing here knows about GLM.
"""

from .attention import attention
from .dropout import Dropout, DropoutAttention, keep_mask
from .half import Linear, cpu_lacks_gemm, half_dtype_without_gemm, linear

__all__ = [
    "Dropout",
    "DropoutAttention",
    "Linear",
    "attention",
    "cpu_lacks_gemm",
    "half_dtype_without_gemm",
    "keep_mask",
    "linear",
]
