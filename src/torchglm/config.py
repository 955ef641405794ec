"""GLMConfig: the model's hyper-parameters, readable from the released ``config.json`` files as they are.

The released checkpoints say ``"model_type": "glm"``, a name that current ``transformers`` gives to GLM-4, so
torchglm registers its own ``model_type`` ("torchglm") and reads the released files through ``GLMConfig``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

RELEASED_MODEL_TYPE = "glm"
POOL_TOKENS = ("cls", "start", "pad")
# Released config.json files also hold keys that change nothing in the model: checkpoint_activations and
# checkpoint_num_layers (training switches: parallel.activation_checkpointing here), output_predict and
# parallel_output (the original's model-parallel output), attention_scale (its fp16 score rescaling: the same
# attention for any value >= 1), spell_length and spell_func (P-tuning's prompt, a finetuning option). They are
# kept as plain attributes, so folders round-trip, and never read.


@strict(accept_kwargs=True)
class GLMConfig(PreTrainedConfig):
    """Hyper-parameters of a GLM model; field names are those of the released ``config.json``.

    Example::

        config = GLMConfig.from_preset("large")
        config = GLMConfig.from_pretrained("path/to/glm-large")   # a released folder or a torchglm one
    """

    model_type = "torchglm"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "max_position_embeddings": "max_sequence_length",
        "layer_norm_eps": "layernorm_epsilon",
    }

    vocab_size: int = 30592
    hidden_size: int = 1024
    num_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int | None = None
    """Width of the MLP; the original always used ``4 * hidden_size``."""
    max_sequence_length: int = 512
    """Rows of each position table minus one (the original allocates ``max_sequence_length + 1``)."""
    embedding_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    output_dropout_prob: float = 0.1
    block_position_encoding: bool = True
    """Two position ids per token (text position, position inside the span); False gives 1-D positions."""
    layernorm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    pool_token: str = "cls"
    """Token whose hidden state the sequence-classification head pools: cls (index 0), start (sep), pad (sep-1)."""
    use_cache: bool = True
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs: Any):
        # The released files name their own remote classes; they mean nothing to torchglm.
        kwargs.pop("auto_map", None)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)
        self._check_values()

    def _check_values(self):
        """Every value the model cannot honour is a ValueError at construction, naming the field."""
        for name in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "max_sequence_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GLMConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"GLMConfig.hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"GLMConfig.{name} must be in [0, 1), got {value!r}")
        if getattr(self, "relative_encoding", False):
            raise ValueError(
                "GLMConfig.relative_encoding=True (Transformer-XL relative positions) is not supported: "
                "no released GLM checkpoint uses it"
            )
        if self.pool_token not in POOL_TOKENS:
            raise ValueError(f"GLMConfig.pool_token must be one of {POOL_TOKENS}, got {self.pool_token!r}")

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        # Released files carry "model_type": "glm", the name transformers gives to GLM-4: read them as ours.
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == RELEASED_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GLMConfig:
        """A configuration of the original model sizes (``PRESETS``), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown GLM preset {name!r}; known presets: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown GLMConfig field(s) {unknown} for preset {name!r}")
        return cls(**{**PRESETS[name], **overrides})


BERT_VOCAB = 30592  # 30522 WordPiece tokens + command tokens, padded to a multiple of 64
GPT2_VOCAB = 50304  # 50257 BPE tokens + command tokens, padded
CHINESE_VOCAB = 50048  # 50000 SentencePiece pieces + command tokens, padded


def _size(layers: int, hidden: int, heads: int, seq: int, vocab: int) -> dict[str, Any]:
    return dict(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, max_sequence_length=seq, vocab_size=vocab
    )


PRESETS: dict[str, dict[str, Any]] = {
    # name: (layers, hidden, heads, max sequence length, vocabulary)
    "tiny": _size(2, 64, 4, 128, BERT_VOCAB),
    "base": _size(12, 768, 12, 512, BERT_VOCAB),
    "large": _size(24, 1024, 16, 512, BERT_VOCAB),
    "large-chinese": _size(24, 1024, 16, 1024, CHINESE_VOCAB),
    "roberta-large": _size(24, 1024, 16, 512, GPT2_VOCAB),
    "410m": _size(30, 1024, 16, 512, BERT_VOCAB),
    "515m": _size(30, 1152, 18, 512, BERT_VOCAB),
    "2b": _size(36, 2048, 32, 1024, GPT2_VOCAB),
    "10b": _size(48, 4096, 64, 1024, GPT2_VOCAB),
    "10b-chinese": _size(48, 4096, 64, 1024, CHINESE_VOCAB),
}
