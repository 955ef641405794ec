"""The GLM transformer, read top to bottom: embeddings, attention, MLP, block, GLMModel, heads.

GLM is a pre-LayerNorm transformer whose attention mask lets part A (the text with blanks) attend
bidirectionally while part B (the spans being generated) attends to all of part A and causally to itself.
That mask is usually given by one number per sample, ``sep``: keys before ``sep`` are visible to every query,
keys from ``sep`` on only to queries at or after them. Each token has two positions: its place in the text
(a part-B token takes the position of its blank) and its place inside its span (0 in part A, 1.. in part B).

Parameter names are those of the released checkpoints, so they load without renaming.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, Replicate
from transformers import Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput

from torchglm.config import GLMConfig
from torchglm.layout import Block, GLMBatch, Sample, block_targets, build_batch, model_inputs
from torchglm.ops import Dropout, Linear, attention, linear

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Attention masks


def build_attention_mask(
    attention_mask: torch.Tensor | int | None, batch_size: int, query_length: int, past_length: int, device
) -> tuple[torch.Tensor | None, bool]:
    """Turn any of the accepted mask forms into a boolean SDPA mask (True = may attend).

    Returns ``(mask, is_causal)``; ``mask`` is ``[B or 1, 1, Lq, Lk]`` or None when every key is visible or
    plain causal attention (``is_causal``) says it all, which lets SDPA pick its fastest kernel.

    Accepted forms, as in the original: ``None`` (the new tokens see the whole cache and themselves causally),
    a scalar or ``[B]`` ``sep`` (keys ``< sep`` visible to every query, causal after), or an explicit
    ``[B, 1, Lq, Lk]`` 0/1 mask.
    """
    key_length = past_length + query_length
    if attention_mask is None:
        if query_length == 1 or past_length == 0:
            return None, query_length > 1  # decoding one token sees everything; no cache: plain causal
        attention_mask = past_length
    if isinstance(attention_mask, int) or (torch.is_tensor(attention_mask) and attention_mask.dim() <= 1):
        sep = torch.as_tensor(attention_mask, device=device)
        if sep.dim() == 1 and sep.numel() != batch_size:
            raise ValueError(f"attention_mask as sep has {sep.numel()} entries; expected one per sample ({batch_size})")
        if sep.is_floating_point():
            raise ValueError(f"attention_mask as sep must hold integers, got dtype {sep.dtype}")
        low, high = _min_max(sep)
        if low < 0 or high > key_length:
            bad = low if low < 0 else high
            raise ValueError(f"sep = {bad} is outside [0, {key_length}] (the key length)")
        if query_length == 1:
            return None, False  # one new token sees every key before it and itself, whatever sep is
        if low == high:  # one sep for the whole batch (a scalar, or every sample alike): SDPA's fast paths apply
            if low >= key_length:
                return None, False  # fully bidirectional
            if low == 0 and past_length == 0:
                return None, True
            sep = sep.reshape(-1)[:1]
        keys = torch.arange(key_length, device=device)
        queries = torch.arange(past_length, key_length, device=device)
        causal = keys[None, :] <= queries[:, None]  # [Lq, Lk]
        visible = keys[None, None, :] < sep.view(-1, 1, 1)  # [B or 1, 1, Lk]
        return (causal[None] | visible)[:, None], False
    if attention_mask.dim() == 3:
        attention_mask = attention_mask[:, None]
    if attention_mask.dim() != 4:
        raise ValueError(
            f"attention_mask must be a sep (scalar or [B]) or a [B, 1, Lq, Lk] 0/1 mask, "
            f"got shape {tuple(attention_mask.shape)}"
        )
    expected = (query_length, key_length)
    if tuple(attention_mask.shape[-2:]) != expected or attention_mask.shape[0] not in (1, batch_size):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected [{batch_size}, 1, "
            f"{query_length}, {key_length}] (queries x cached + new keys)"
        )
    return attention_mask.to(device=device) != 0, False


def _one_mask(attention_mask, sep):
    """``sep=`` or the released code's overloaded ``attention_mask`` (a sep or a mask), not both."""
    if sep is None:
        return attention_mask
    if attention_mask is not None:
        raise ValueError("give sep or attention_mask, not both")
    if torch.is_tensor(sep) and sep.dim() > 1:
        raise ValueError(f"sep is a scalar or one entry per sample, got shape {tuple(sep.shape)}")
    return sep


def _min_max(values: torch.Tensor) -> tuple[int, int]:
    """Both bounds in one reduction and one device sync: input checks run at every decoding step."""
    if values.dim() == 0:
        return int(values), int(values)
    low, high = torch.stack(torch.aminmax(values)).tolist()
    return low, high


# ----------------------------------------------------------------------------------------------------------------
# Layers


class GLMAttention(nn.Module):
    """Multi-head self-attention with a fused q|k|v projection (contiguous thirds), through SDPA.

    The number of heads is read off the projection's output: all of them in one process, this rank's under
    tensor parallelism (whose layout gives each rank its own heads' q|k|v, see :func:`tensor_parallel_layout`),
    so each rank runs and caches only its heads.
    """

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dense.is_residual_output = True  # initialised with the depth-scaled std, as the original
        self.attention_dropout = config.attention_dropout_prob
        self.output_dropout = Dropout(config.output_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,  # [B, L, H]
        mask: torch.Tensor | None,  # [B or 1, 1, Lq, Lk] bool
        is_causal: bool,
        empty_rows: torch.Tensor | None,  # [B or 1, 1, Lq, 1] bool: queries that may see no key
        cache: Cache | None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states)  # [B, L, 3 * heads * D]
        heads = qkv.shape[-1] // (3 * self.head_dim)
        query, key, value = qkv.view(batch, length, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        if empty_rows is not None:
            # The original gives a query that may see nothing a uniform average over all keys (every score is
            # -10000); a zero query does the same through SDPA and keeps padding rows free of NaN.
            query = query.masked_fill(empty_rows, 0.0)
            mask = mask | empty_rows
        context = attention(
            query, key, value, mask, is_causal, dropout=self.attention_dropout if self.training else 0.0
        )  # [B, heads, L, D]
        context = context.transpose(1, 2).reshape(batch, length, -1)
        return self.output_dropout(self.dense(context))


class GLMMLP(nn.Module):
    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = Linear(config.intermediate_size, config.hidden_size)
        self.dense_4h_to_h.is_residual_output = True
        self.dropout = Dropout(config.output_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.gelu(self.dense_h_to_4h(hidden_states), approximate="tanh")  # the original's GELU
        return self.dropout(self.dense_4h_to_h(hidden_states))


class GLMBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then + mlp(ln(.))."""

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GLMAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, hidden_states, mask=None, is_causal=False, empty_rows=None, cache=None):
        hidden_states = hidden_states + self.attention(
            self.input_layernorm(hidden_states), mask, is_causal, empty_rows, cache
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class GLMTransformer(nn.Module):
    """Position tables, the blocks and the final LayerNorm (the released checkpoints' ``transformer.*``)."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        table_rows = config.max_sequence_length + 1
        self.position_embeddings = nn.Embedding(table_rows, config.hidden_size)
        if config.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(table_rows, config.hidden_size)
        self.embedding_dropout = Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


# ----------------------------------------------------------------------------------------------------------------
# Models


class GLMPreTrainedModel(PreTrainedModel):
    config_class = GLMConfig
    base_model_prefix = "glm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = False
    # Parameters a head adds on top of a pretrained GLM: missing in a language-model checkpoint by design.
    _new_head_keys: tuple[str, ...] = ()
    tensor_parallel_plan: dict[str, str] = {
        "*transformer.layers.*.attention.query_key_value": "colwise",
        "*transformer.layers.*.attention.dense": "rowwise",
        "*transformer.layers.*.mlp.dense_h_to_4h": "colwise",
        "*transformer.layers.*.mlp.dense_4h_to_h": "rowwise",
    }
    """Module pattern (``*``: anything) -> parallel style. The column-wise ``query_key_value`` gives each rank
    whole heads once :func:`tensor_parallel_layout` has regrouped its rows; ``dense`` takes the heads' outputs
    row-wise as the MLP's second matrix takes the first's, so a block communicates twice (an all-reduce each)."""
    tensor_parallel_inference_plan: dict[str, str] = {**tensor_parallel_plan, "*word_embeddings": "vocab"}
    """Inference adds the vocabulary-parallel word embeddings (rows split by token id; the lookup all-reduced, the
    tied output layer's logits all-gathered, see ``TiedOutputHead.output_logits``). Training keeps them whole."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save; then the weight files get an ordinary file's mode. safetensors >= 0.8 writes them
        0600 whatever the umask (safetensors/safetensors#782), which left a saved model unreadable to other users
        (a shared cluster, a container running as another user) while its config.json was readable."""
        super().save_pretrained(save_directory, *args, **kwargs)
        umask = os.umask(0)
        os.umask(umask)
        for weights in Path(save_directory).glob("*.safetensors"):
            os.chmod(weights, 0o666 & ~umask)

    def _init_weights(self, module: nn.Module):
        """The original's init: N(0, 0.02) everywhere, output projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_output", False):
                std = std / math.sqrt(2.0 * self.config.num_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a released GLM folder (``config.json`` + ``pytorch_model.bin``) or a torchglm safetensors folder
        (one file or shards).

        Unlike plain transformers, a missing or unexpected weight is an error listing the keys, except the
        parameters of a freshly added head (``_new_head_keys``), which are initialised and reported. Local folders
        load leanly (:func:`torchglm.checkpoint.lean_state_dict`): with a ``dtype`` conversion, peak memory stays
        near one copy of the weights in that dtype. Extra keywords:

        - ``device``: shorthand for ``device_map=device`` (the whole model on one device).
        - ``max_sequence_length`` above the checkpoint's grows the position tables (old rows kept; logged).
        - ``quantization="int8"`` (or ``"int4"`` on CUDA): the blocks' weights quantized through torchao once
          loaded, for inference (:mod:`torchglm.quantization`).
        """
        from torchglm.builtin import is_builtin, resolve
        from torchglm.checkpoint import check_checkpoint_folder
        from torchglm.quantization import check_quantization_mode, quantize_weights

        quantization = kwargs.pop("quantization", None)
        if quantization is not None:
            check_quantization_mode(quantization)  # before the weights are read

        if is_builtin(pretrained_model_name_or_path):  # shipped in bf16 to stay small; computed in fp32
            kwargs.setdefault("dtype", torch.float32)
        if "torch_dtype" in kwargs:  # the name transformers 4 used
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        if "device" in kwargs:
            kwargs.setdefault("device_map", kwargs.pop("device"))
        pretrained_model_name_or_path = resolve(pretrained_model_name_or_path)
        check_checkpoint_folder(pretrained_model_name_or_path)
        wants_info = kwargs.pop("output_loading_info", False)
        folder = Path(pretrained_model_name_or_path) if pretrained_model_name_or_path is not None else None
        if folder is not None and folder.is_dir() and not args and not _NOT_LEAN.intersection(kwargs):
            model, info = cls._from_folder_lean(folder, kwargs)
        else:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        missing = sorted(k for k in info["missing_keys"] if not k.startswith(cls._new_head_keys or ("\0",)))
        unexpected = sorted(info["unexpected_keys"])
        mismatched = sorted(str(m) for m in info.get("mismatched_keys", []))
        if mismatched:
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path}: its weights do not fit its config.json: mismatched "
                f"shapes {mismatched}"
            )
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} does not fit {cls.__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        if quantization is not None:
            quantize_weights(model, quantization)
        return (model, info) if wants_info else model

    @classmethod
    def _from_folder_lean(cls, folder: Path, kwargs: dict):
        """transformers' loader fed with :func:`~torchglm.checkpoint.lean_state_dict` instead of its own mapped
        files; config keywords (``max_sequence_length=...``) split off as transformers does."""
        from transformers import GenerationConfig

        from torchglm.checkpoint import grow_position_tables, lean_state_dict

        config = kwargs.pop("config", None)
        stored = GLMConfig.from_pretrained(folder)
        if config is None:
            config_keys = set(stored.to_dict()) - {"dtype"}
            overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in config_keys}
            config = GLMConfig.from_pretrained(folder, **overrides)
        config.name_or_path = str(folder)
        dtype = kwargs.get("dtype")
        if isinstance(dtype, str):
            dtype = None if dtype == "auto" else getattr(torch, dtype)
        weights = lean_state_dict(folder, dtype)
        try:
            if config.max_sequence_length != stored.max_sequence_length:  # raised on purpose (a keyword)
                for line in grow_position_tables(
                    weights, config.max_sequence_length + 1, config.initializer_range, dtype
                ):
                    logger.warning(
                        "max_sequence_length %d > %d of %s: grew %s",
                        config.max_sequence_length,
                        stored.max_sequence_length,
                        folder,
                        line,
                    )
            kwargs.setdefault("ignore_mismatched_sizes", True)  # reported below, with the file, as a ValueError
            model, info = super().from_pretrained(
                None, config=config, state_dict=weights, output_loading_info=True, **kwargs
            )
            info["mismatched_keys"] = [_with_source(m, weights.source) for m in info.get("mismatched_keys", [])]
        finally:
            weights.close()
        model.config.name_or_path = str(folder)  # transformers set it to the None it was given
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model, info


# Keywords that leave loading to transformers unchanged: they ask for machinery the lean path does not cover.
_NOT_LEAN = frozenset(
    {
        "state_dict",
        "quantization_config",
        "tp_plan",
        "tp_size",
        "device_mesh",
        "gguf_file",
        "subfolder",
        "from_tf",
        "from_flax",
        "key_mapping",
        "offload_folder",
        "offload_state_dict",
        "max_memory",
    }
)


def _with_source(mismatch, source: dict) -> str:
    """A mismatched-shape entry with the file its tensor came from."""
    text = str(mismatch)
    found = [name for name in source if name in text]
    return f"{text} (in {source[max(found, key=len)].name})" if found else text


class GLMModel(GLMPreTrainedModel):
    """The GLM trunk: word + position + block-position embeddings, blocks, final LayerNorm -> hidden states."""

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMTransformer(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,  # [B, L]
        position_ids: torch.LongTensor | None = None,  # [B, 2, L] (position, block position) or [B, L]
        attention_mask: torch.Tensor | int | None = None,  # [B, 1, Lq, Lk] 0/1, or sep as the released code
        cache: Cache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,  # deprecated transformers name of `cache`
        return_dict: bool | None = None,
        sep: torch.Tensor | int | None = None,  # scalar or [B]: keys before sep seen by all, causal after
        **kwargs,
    ) -> BaseModelOutputWithPast:
        attention_mask = _one_mask(attention_mask, sep)
        if cache is None:
            cache = past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            self._check_ids(input_ids, "input_ids", self.config.vocab_size)
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and not (self.gradient_checkpointing and self.training):
            cache = DynamicCache()
        if not use_cache:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0

        positions, block_positions = self._split_positions(position_ids, batch, length, past_length, inputs_embeds)
        hidden_states = inputs_embeds + self.transformer.position_embeddings(positions)
        if self.config.block_position_encoding:
            hidden_states = hidden_states + self.transformer.block_position_embeddings(block_positions)
        hidden_states = self.transformer.embedding_dropout(hidden_states)

        mask, is_causal = build_attention_mask(attention_mask, batch, length, past_length, inputs_embeds.device)
        empty_rows = None
        if mask is not None and torch.is_tensor(attention_mask) and attention_mask.dim() >= 3:
            empty_rows = ~mask.any(dim=-1, keepdim=True)
            if not empty_rows.any():
                empty_rows = None

        all_hidden_states = [] if output_hidden_states else None
        for block in self.transformer.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = block(hidden_states, mask=mask, is_causal=is_causal, empty_rows=empty_rows, cache=cache)
        hidden_states = self.transformer.final_layernorm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
        )

    def _split_positions(self, position_ids, batch, length, past_length, reference):
        """Return (positions, block positions), each [B, L]; default: 0.. after the cache, block position 0."""
        if position_ids is None:
            positions = torch.arange(past_length, past_length + length, device=reference.device).expand(batch, -1)
            return positions, torch.zeros_like(positions)
        expected = (batch, 2, length) if self.config.block_position_encoding else None
        if position_ids.dim() == 3:
            if position_ids.shape[0] != batch or position_ids.shape[1] != 2 or position_ids.shape[2] != length:
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected [{batch}, 2, {length}]")
            positions, block_positions = position_ids[:, 0], position_ids[:, 1]
        elif position_ids.dim() == 2 and not self.config.block_position_encoding:
            if tuple(position_ids.shape) != (batch, length):
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected [{batch}, {length}]")
            positions, block_positions = position_ids, torch.zeros_like(position_ids)
        else:
            raise ValueError(
                f"position_ids has shape {tuple(position_ids.shape)}; expected {list(expected or (batch, length))}"
            )
        limit = self.config.max_sequence_length + 1
        self._check_ids(positions, "position id", limit)
        if self.config.block_position_encoding:
            self._check_ids(block_positions, "block position id", limit)
        return positions, block_positions

    @staticmethod
    def _check_ids(ids: torch.Tensor, what: str, limit: int):
        if ids.numel() == 0:
            return
        low, high = _min_max(ids)
        if low < 0 or high >= limit:
            bad = low if low < 0 else high
            raise ValueError(f"{what} {bad} is outside the table [0, {limit - 1}] (size {limit})")


class TiedOutputHead:
    """The output layer of the heads that predict tokens: hidden states times the tied word embeddings."""

    def output_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[..., H]`` -> logits ``[..., V]``.

        A CPU decoding step (one or two rows, fp32, no gradient) multiplies by a cached ``[H, V]`` copy of the
        embeddings instead: MKL's matrix-vector product reads the row-major ``[V, H]`` table at ~60% of the speed
        of its transpose, and this product is the largest of a step (a glm-base step is ~8% faster). The copy
        costs ``V x H`` floats of memory while decoding and is rebuilt when the weights change.
        """
        weight = self.glm.word_embeddings.weight
        if isinstance(weight, DTensor):  # vocabulary-parallel (tensor-parallel inference): every rank gets all logits
            hidden_states = DTensor.from_local(hidden_states, weight.device_mesh, [Replicate()], run_check=False)
            return linear(hidden_states, weight).full_tensor()
        few_rows = hidden_states.numel() <= 2 * hidden_states.shape[-1]
        if not (few_rows and weight.device.type == "cpu" and weight.dtype == hidden_states.dtype == torch.float32):
            return linear(hidden_states, weight)
        if torch.is_grad_enabled() and (weight.requires_grad or hidden_states.requires_grad):
            return linear(hidden_states, weight)
        version = (weight.data_ptr(), weight._version)
        cached = getattr(self, "_decoding_head", None)
        if cached is None or cached[0] != version:
            cached = self._decoding_head = (version, weight.detach().t().contiguous())
        return torch.matmul(hidden_states, cached[1])

    def target_log_probs(self, hidden_states: torch.Tensor, targets: torch.Tensor, chunk: int = 1024):
        """``(log p(target), target is the argmax)`` for each row of ``hidden_states [N, H]``, targets ``[N]``.

        The vocabulary is projected at these rows only, ``chunk`` rows at a time (a ``[chunk, V]`` fp32 block
        of log-probabilities at most). The scoring primitive of multiple choice, LAMBADA, perplexity and cloze.
        """
        log_probs, is_argmax = [], []
        for first in range(0, max(len(targets), 1), chunk):
            logits = self.output_logits(hidden_states[first : first + chunk]).float()
            wanted = targets[first : first + chunk, None]
            log_probs.append((logits.gather(-1, wanted) - logits.logsumexp(-1, keepdim=True))[:, 0])
            is_argmax.append(logits.argmax(-1) == wanted[:, 0])
        return torch.cat(log_probs), torch.cat(is_argmax)


class GLMForConditionalGeneration(TiedOutputHead, GLMPreTrainedModel, GenerationMixin):
    """GLM with its language-model head (tied to the word embeddings, no bias).

    ``labels`` are aligned with the input positions (the label at position i is what position i predicts),
    not shifted, with -100 ignored, as in the original. ``predict_at`` (bool ``[B, L]``) computes the logits at
    those positions only, returned flattened ``[N, V]``: blank infilling predicts 15-50% of the positions, and the
    output layer at every position costs ~17% of a glm-base training step.
    """

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self._decoding_head = None  # (weight version, [H, V] copy), see `output_logits`
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.glm.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        self.glm.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | int | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        predict_at: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.glm(
            input_ids,
            position_ids,
            attention_mask,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # [B, L, H]
        if predict_at is not None:
            hidden = hidden[predict_at.to(hidden.device)]  # [N, H]
            labels = labels[predict_at] if labels is not None else None
        logits = self.output_logits(hidden)  # [B, L, V] or [N, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten().to(logits.device), ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )

    # transformers' ``generate`` on the inputs of ``tokenizer.build_inputs_for_generation``: ``position_ids
    # [B, 2, L+G]`` and ``generation_attention_mask [B, 1, L+G, L+G]`` plan every step ahead, so each step slices
    # its rows instead of letting ``generate`` extend them. Fills of every blank: ``torchglm.generation.fill``.
    def prepare_inputs_for_generation(
        self, input_ids, cache=None, position_ids=None, generation_attention_mask=None, use_cache=None, **kwargs
    ):
        if position_ids is None or position_ids.dim() != 3 or generation_attention_mask is None:
            raise ValueError(
                "GLM generate() takes the position_ids [B, 2, L+G] and generation_attention_mask [B, 1, L+G, L+G] "
                "of tokenizer.build_inputs_for_generation(...)"
            )
        past, length = (cache.get_seq_length() if cache is not None else 0), input_ids.shape[1]
        if length > position_ids.shape[-1]:
            raise ValueError(
                f"generation reached {length} tokens, past the {position_ids.shape[-1]} that "
                "build_inputs_for_generation planned: raise its max_gen_length or lower max_length"
            )
        return {
            "input_ids": input_ids[:, past:],
            "position_ids": position_ids[..., past:length],
            "attention_mask": generation_attention_mask[:, :, past:length, :length],
            "cache": cache,
            "use_cache": use_cache,
        }

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        position_ids = model_kwargs.pop("position_ids", None)  # planned ahead: not to be extended by one
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["position_ids"] = position_ids
        return model_kwargs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # transformers repeats 3-D position_ids on dim 1 (multimodal layout); GLM's [B, 2, L] repeat on dim 0.
        position_ids = model_kwargs.pop("position_ids", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if position_ids is not None:
            model_kwargs["position_ids"] = position_ids.repeat_interleave(expand_size, dim=0)
        return input_ids, model_kwargs


@dataclass
class GLMMultipleChoiceOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # [B, C] summed (optionally length-normalised) log-probabilities


class GLMForMultipleChoice(TiedOutputHead, GLMPreTrainedModel):
    """Scores each answer choice by the summed log-probability of its tokens (the cloze formulation).

    Two input layouts, both of the original code:
    - packed (released ``build_inputs_for_multiple_choice``): ``input_ids [B, L]`` holding the context once and
      every choice as its own part-B block under a 4-D mask, with ``choice_ids``/``choice_indices`` ``[B, C, T]``
      (the token ids of each choice, padded with -100, and the positions whose logits predict them);
    - one sequence per choice (original SuperGLUE code): ``input_ids [B, C, L]`` with ``target_ids`` and
      ``logit_mask`` ``[B, C, L]`` aligned with the positions.
    Only the scored positions go through the output layer (``target_log_probs``, the primitive that
    ``torchglm.decoding.score`` uses too). ``length_penalty`` > 0 divides each score by (number of choice
    tokens) ** length_penalty.
    """

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self._decoding_head = None
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | int | None = None,
        choice_ids=None,
        choice_indices=None,
        target_ids: torch.LongTensor | None = None,
        logit_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        length_penalty: float = 0.0,
        **kwargs,
    ) -> GLMMultipleChoiceOutput:
        num_choices = None
        sep = kwargs.pop("sep", None)
        if input_ids.dim() == 3:  # one sequence per choice: fold choices into the batch
            batch, num_choices, length = input_ids.shape
            input_ids = input_ids.reshape(-1, length)
            if position_ids is not None:
                position_ids = position_ids.reshape(batch * num_choices, *position_ids.shape[2:])
            attention_mask, sep = (_fold_choices(m, batch * num_choices) for m in (attention_mask, sep))
        if target_ids is not None:
            target_ids = target_ids.reshape(input_ids.shape)
            keep = logit_mask.reshape(input_ids.shape) != 0 if logit_mask is not None else target_ids >= 0
            choice_ids = target_ids.masked_fill(~keep, -100)[:, None]  # [N, 1, L]
            choice_indices = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(choice_ids)
        if choice_ids is None or choice_indices is None:
            raise ValueError("GLMForMultipleChoice needs choice_ids and choice_indices, or target_ids")
        choice_ids, choice_indices = _pad_choices(choice_ids, -100), _pad_choices(choice_indices, 0)
        choice_ids, choice_indices = choice_ids.to(input_ids.device), choice_indices.to(input_ids.device)

        hidden = self.glm(input_ids, position_ids, attention_mask, sep=sep, use_cache=False, **kwargs)
        hidden = hidden.last_hidden_state  # [N, L, H]
        scored = choice_ids >= 0  # [N, C, T]
        rows = torch.arange(len(hidden), device=hidden.device)[:, None, None].expand_as(scored)
        token_scores, _ = self.target_log_probs(hidden[rows[scored], choice_indices[scored]], choice_ids[scored])
        scores = torch.zeros(scored.shape, dtype=token_scores.dtype, device=hidden.device)
        scores = scores.masked_scatter(scored, token_scores).sum(-1)  # [N, C]
        if length_penalty > 0:
            scores = scores / scored.sum(-1).clamp(min=1) ** length_penalty
        if num_choices is not None:
            scores = scores.reshape(-1, num_choices)
        loss = F.cross_entropy(scores, labels.to(scores.device)) if labels is not None else None
        return GLMMultipleChoiceOutput(loss=loss, logits=scores)

    @staticmethod
    def inputs_for_choices(
        contexts: Sequence[Sequence[int]],
        choices: Sequence[Sequence[Sequence[int]]],
        *,
        blank_ids: Sequence[int],
        sop_id: int,
        pad_id: int,
    ) -> GLMBatch:
        """The packed inputs of ``forward`` from token ids: ``choices[b]`` are sample b's choices (the token ids
        filling the first blank of ``contexts[b]``), each its own block after the context, seeing it and no
        other choice. Laid out by :mod:`torchglm.layout`, as the tokenizer's ``build_inputs_for_multiple_choice``
        is; ``choice_ids`` / ``choice_indices`` come with it."""
        samples, blank_set = [], set(blank_ids)
        for i, (context, row) in enumerate(zip(contexts, choices, strict=True)):
            blank = next((k for k, t in enumerate(context) if t in blank_set), None)
            if blank is None:
                raise ValueError(f"context {i} has no blank (none of the ids {sorted(blank_ids)})")
            samples.append(Sample(context, [Block.span(sop_id, choice, blank) for choice in row]))
        batch = build_batch(samples, pad_id=pad_id, blocks_see_each_other=False)
        choice_ids, choice_indices = block_targets(batch, max(len(row) for row in choices))
        return {**model_inputs(batch), "choice_ids": choice_ids, "choice_indices": choice_indices}


def _fold_choices(mask, rows: int):
    """A per-choice mask or sep ``[B, C, ...]`` as ``[B * C, ...]`` (scalars and None pass)."""
    if torch.is_tensor(mask) and mask.dim() >= 2:
        return mask.reshape(rows, *mask.shape[2:])
    return mask


def _pad_choices(values, pad_value: int) -> torch.Tensor:
    """Accept ``[B, C, T]`` tensors or the released nested lists of per-choice 1-D tensors."""
    if torch.is_tensor(values):
        return values.long()
    rows = [[torch.as_tensor(choice, dtype=torch.long) for choice in sample] for sample in values]
    longest = max((len(choice) for sample in rows for choice in sample), default=0)
    most = max(len(sample) for sample in rows)
    out = torch.full((len(rows), most, longest), pad_value, dtype=torch.long)
    for i, sample in enumerate(rows):
        for j, choice in enumerate(sample):
            out[i, j, : len(choice)] = choice
    return out


class GLMForSequenceClassification(GLMPreTrainedModel):
    """Pools one token's hidden state -> tanh(dense) -> dropout -> out_proj, as the original's classifier.

    ``config.pool_token``: ``cls`` takes position 0, ``start`` the position ``sep``, ``pad`` the position
    ``sep - 1`` (these two need ``attention_mask`` given as ``sep``).
    """

    _new_head_keys = ("dense.", "out_proj.", "glm.dense.", "glm.out_proj.")

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.glm = GLMModel(config)
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.output_dropout_prob)
        self.out_proj = Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | int | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ):
        from transformers.modeling_outputs import SequenceClassifierOutput

        num_choices = None
        attention_mask = _one_mask(attention_mask, kwargs.pop("sep", None))
        if input_ids.dim() == 3:  # [B, C, L]: one sequence per choice, one score each
            num_choices = input_ids.shape[1]
            input_ids = input_ids.flatten(0, 1)
            if position_ids is not None:
                position_ids = position_ids.flatten(0, 1)
            attention_mask = _fold_choices(attention_mask, input_ids.shape[0])
        hidden = self.glm(input_ids, position_ids, attention_mask, use_cache=False, **kwargs).last_hidden_state
        if self.config.pool_token == "cls":
            pooled = hidden[:, 0]
        else:
            if not torch.is_tensor(attention_mask) or attention_mask.dim() > 1:
                raise ValueError(f"pool_token={self.config.pool_token!r} needs sep (or attention_mask given as sep)")
            index = attention_mask.expand(hidden.shape[0]) - (1 if self.config.pool_token == "pad" else 0)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        logits = self.out_proj(self.dropout(torch.tanh(self.dense(pooled))))
        if num_choices is not None:
            logits = logits.reshape(-1, num_choices)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        return SequenceClassifierOutput(loss=loss, logits=logits)


# ----------------------------------------------------------------------------------------------------------------
# Tensor parallelism and FLOPs: pure functions for the recipes (no distributed code here)


def tensor_parallel_layout(state_dict: dict, num_heads: int, tp_size: int, inverse: bool = False) -> dict:
    """The ``query_key_value`` rows regrouped for ``tp_size`` ranks, or back (``inverse``); other tensors as given.

    The released fused projection holds q, k and v as contiguous thirds (``q | k | v``, heads in order inside
    each). A column-wise split of that would give rank 0 all of q; regrouped as ``q_0 k_0 v_0 | q_1 k_1 v_1 |
    ...`` (``q_r``: the queries of rank r's ``num_heads / tp_size`` heads), the contiguous split gives every rank
    the q, k and v of its own heads, so attention runs and caches per rank. Checkpoints of a tensor-parallel run
    hold this layout; exports go back to the released one.
    """
    if num_heads % tp_size:
        raise ValueError(f"{num_heads} attention heads do not split over tensor-parallel size {tp_size}")
    out = dict(state_dict)
    for name, tensor in state_dict.items():
        if not name.endswith(("attention.query_key_value.weight", "attention.query_key_value.bias")):
            continue
        rest = tensor.shape[1:]
        groups = (tp_size, 3) if inverse else (3, tp_size)
        grouped = tensor.reshape(*groups, tensor.shape[0] // (3 * tp_size), *rest).transpose(0, 1)
        out[name] = grouped.reshape(tensor.shape).contiguous()
    return out


@dataclass(frozen=True)
class FlopCount:
    """Model FLOPs of one training token (forward + backward), split where the work is."""

    per_token: float
    """Every token: the blocks' matrices (``6 N``) and the attention products (``12 L H S``, full S x S)."""
    per_prediction: float
    """Every predicted token: the tied output layer (``6 V H``), which runs only where there is a target."""


def training_flops(config: GLMConfig, seq_length: int) -> FlopCount:
    """The FLOP formula for MFU: tokens x ``per_token`` + predicted tokens x ``per_prediction``."""
    h, layers = config.hidden_size, config.num_layers
    block_weights = layers * (4 * h * h + 2 * h * config.intermediate_size)  # q|k|v + dense + two MLP matrices
    return FlopCount(6.0 * block_weights + 12.0 * layers * h * seq_length, 6.0 * config.vocab_size * h)
