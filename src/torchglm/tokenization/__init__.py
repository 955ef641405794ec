"""GLM tokenizers: BERT WordPiece, GPT-2 / RoBERTa byte-level BPE (Rust ``tokenizers``) and the Chinese
SentencePiece model, each with GLM's command tokens at the original framework's ids, plus the input builders
for generation and multiple choice. Start from ``GLMTokenizer.from_pretrained(folder)``; see docs/tokenizers.md.
"""

from .base import GLMTokenizer
from .builders import build_inputs_for_generation, build_inputs_for_multiple_choice
from .chinese import GLMChineseTokenizer
from .commands import CommandLayout, CommandToken
from .fast import GLMTokenizerFast
from .training import train_tokenizer

__all__ = [
    "CommandLayout",
    "CommandToken",
    "GLMChineseTokenizer",
    "GLMTokenizer",
    "GLMTokenizerFast",
    "build_inputs_for_generation",
    "build_inputs_for_multiple_choice",
    "train_tokenizer",
]
