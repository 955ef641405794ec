"""Training a new WordPiece or byte-level BPE vocabulary, for small GLMs trained from scratch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers


def train_tokenizer(
    files: Iterable[str | os.PathLike],
    kind: str = "bpe",
    vocab_size: int = 8000,
    save_directory: str | os.PathLike | None = None,
    min_frequency: int = 2,
    lowercase: bool = True,
    add_task_mask: bool = True,
):
    """Train a vocabulary on text ``files`` and return a GLM tokenizer built on it.

    ``kind="bpe"`` trains a GPT-2-style byte-level BPE (``<|endoftext|>`` is id 0, the GPT-2 command tokens
    follow the vocabulary); ``kind="wordpiece"`` trains an uncased (``lowercase``) BERT-style WordPiece with
    [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4. ``vocab_size`` counts the base vocabulary; ``num_tokens`` adds
    the command tokens. With ``save_directory`` the native files (``vocab.json`` + ``merges.txt`` or
    ``vocab.txt``) and ``tokenizer_config.json`` are written there, so ``GLMTokenizer.from_pretrained`` loads it.

    Example::

        tok = train_tokenizer(["corpus.txt"], kind="bpe", vocab_size=4000, save_directory="tok")
    """
    from .loading import build_bert, build_bpe

    files = [str(f) for f in files]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: no such training file")
    if kind == "bpe":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "wordpiece":
        backend = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(strip_accents=lowercase, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            continuing_subword_prefix="##",
            show_progress=False,
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'wordpiece'")
    backend.train(files, trainer)
    vocab = backend.get_vocab()
    if kind == "wordpiece":
        tokenizer = build_bert(None, vocab=vocab, do_lower_case=lowercase, add_task_mask=add_task_mask)
    else:
        with tempfile.TemporaryDirectory() as tmp:  # a trained BPE gives up its merges only as a file
            backend.model.save(tmp)
            folder = Path(tmp)
            tokenizer = build_bpe(folder / "vocab.json", folder / "merges.txt", "gpt2", add_task_mask=add_task_mask)
    if save_directory is not None:
        tokenizer.save_pretrained(save_directory)
    return tokenizer
