"""Task-test helpers: a tiny random GLM, a word-level stand-in tokenizer, and full forward passes to compare with."""

from __future__ import annotations

import zlib

import torch

from torchglm import GLMConfig, GLMForConditionalGeneration

VOCAB, PAD, EOS, SOP, EOP, MASK, SMASK, GMASK, CLS = 97, 0, 0, 90, 91, 92, 93, 94, 95


class WordTokenizer:
    """Whitespace words -> ids 1..79 by a stable hash; GLM's command tokens at fixed ids (no task masks unless
    ``task_masks``)."""

    cls_token_id, eos_token_id, pad_token_id, sop_token_id, eop_token_id = CLS, EOS, PAD, SOP, EOP
    mask_token_id = MASK

    def __init__(self, task_masks: bool = True):
        self.gmask_token_id = GMASK if task_masks else None
        self.smask_token_id = SMASK if task_masks else None
        self.words: dict[int, str] = {}

    def encode(self, text, add_special_tokens=False, verbose=True):
        ids = []
        for word in text.split():
            ids.append(1 + zlib.crc32(word.encode()) % 79)
            self.words[ids[-1]] = word
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(self.words.get(i, f"<{i}>") for i in ids)

    def __len__(self):
        return 96


def tiny_model(max_sequence_length=64, seed=0):
    torch.manual_seed(seed)
    config = GLMConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_attention_heads=4,
        max_sequence_length=max_sequence_length,
        embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0,
    )  # fmt: skip
    return GLMForConditionalGeneration(config).eval()


@torch.no_grad()
def full_pass_log_probs(model, ids, text_positions, block_positions, sep, targets):
    """Log p(target) and argmax agreement at each (column, target) of one sequence run whole through the model,
    part A (the first ``sep`` columns) bidirectional, the rest causal: the layout written out by hand."""
    input_ids = torch.tensor([ids])
    positions = torch.tensor([[text_positions, block_positions]])
    logits = model(input_ids, positions, attention_mask=torch.tensor([sep])).logits[0].float()
    log_probs = logits.log_softmax(-1)
    values = [float(log_probs[column, target]) for column, target in targets]
    greedy = all(int(logits[column].argmax()) == target for column, target in targets)
    return values, greedy
