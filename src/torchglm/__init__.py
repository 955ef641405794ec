"""torchglm: GLM (General Language Model, autoregressive blank infilling) on current PyTorch.

Importing the package registers GLM with the ``transformers`` Auto classes under ``model_type="torchglm"``,
so folders saved by torchglm load with ``AutoModel*.from_pretrained`` and ``AutoTokenizer.from_pretrained`` and no
``trust_remote_code``.
"""

import torchglm.quantization  # noqa: F401  first: it quiets torchao's import noise before transformers imports it

# isort: split
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from torchglm.config import PRESETS, GLMConfig
from torchglm.generation import GenerationOptions, fill, fill_ids
from torchglm.model import (
    GLMForConditionalGeneration,
    GLMForMultipleChoice,
    GLMForSequenceClassification,
    GLMModel,
    GLMPreTrainedModel,
)
from torchglm.tokenization import GLMTokenizer, train_tokenizer
from torchglm.tokenization.auto import register_auto_tokenizer

__version__ = "0.1.0"

AutoConfig.register(GLMConfig.model_type, GLMConfig, exist_ok=True)
AutoModel.register(GLMConfig, GLMModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(GLMConfig, GLMForConditionalGeneration, exist_ok=True)
AutoModelForMultipleChoice.register(GLMConfig, GLMForMultipleChoice, exist_ok=True)
AutoModelForSequenceClassification.register(GLMConfig, GLMForSequenceClassification, exist_ok=True)
register_auto_tokenizer(GLMConfig)

__all__ = [
    "PRESETS",
    "GLMConfig",
    "GLMModel",
    "GLMPreTrainedModel",
    "GLMForConditionalGeneration",
    "GLMForMultipleChoice",
    "GLMForSequenceClassification",
    "GLMTokenizer",
    "GenerationOptions",
    "fill",
    "fill_ids",
    "train_tokenizer",
]
