"""The Chinese family: SentencePiece ``cog-pretrain.model`` (50000 pieces) plus GLM's command tokens.

SentencePiece has no Rust ``tokenizers`` twin that matches its normalizer byte for byte, so this is a slow
(Python-level) transformers tokenizer around ``sentencepiece``; batches still go through its C++ encoder in one
call per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sentencepiece as spm
from transformers import PreTrainedTokenizer

from .base import GLMTokenizer
from .commands import CommandLayout

MODEL_FILE = "cog-pretrain.model"


class GLMChineseTokenizer(GLMTokenizer, PreTrainedTokenizer):
    """GLM tokenizer for glm-large-chinese / glm-10b-chinese. Build it with ``GLMTokenizer.from_sentencepiece``.

    With ``legacy_gmask`` (glm-10b-chinese) [gMASK] and <|endofpiece|> are one id, 50007: the model cannot tell
    a long blank from the end of a generated piece, ``mask_token_ids`` contains ``eop_token_id``, and 50007
    decodes as ``[gMASK]`` (as the original decoded it). Generation still stops at 50007, which is right for
    that model: it learned to end pieces with the id its blanks use.
    """

    vocab_files_names = {"vocab_file": MODEL_FILE}

    def __init__(self, model_proto: bytes, layout: CommandLayout, options: dict[str, Any], **kwargs):
        self._init_commands(layout, "chinese", options)
        self._model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._sp_size = self.sp.get_piece_size()
        self._command_ids = layout.string_to_id
        super().__init__(**self._special_token_kwargs(layout), **kwargs)

    def __getstate__(self):  # the C++ processor does not pickle; its model bytes do (DataLoader workers)
        state = self.__dict__.copy()
        state["sp"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.sp = spm.SentencePieceProcessor(model_proto=self._model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp_size

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self._sp_size)}
        vocab.update(self._command_ids)
        return vocab

    # ---- encoding ------------------------------------------------------------------------------------------
    def _encode_piece(self, piece: str) -> list[int]:
        return self.sp.encode(piece)

    def _encode_batch(self, texts: list) -> list[list[int]]:
        """``_encode_text`` for many texts with one SentencePiece call for all their text pieces."""
        splits = [self._splitter.split(t) if isinstance(t, str) else [int(i) for i in t] for t in texts]
        pieces = [p for parts in splits for p in parts if isinstance(p, str)]
        encoded = iter(self.sp.encode(pieces)) if pieces else iter(())
        return [[i for p in parts for i in ([p] if isinstance(p, int) else next(encoded))] for parts in splits]

    def _encode_plus(self, text, text_pair=None, **kwargs):
        return self._glm_encode_plus(text, text_pair, **kwargs)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._command_ids:
            return self._command_ids[token]
        return self.sp.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str | None:
        if index in self._canonical:
            return self._canonical[index]
        return self.sp.id_to_piece(index) if 0 <= index < self._sp_size else None

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._convert_id_to_token(ids)
        skip = set(self._canonical) if skip_special_tokens else set()
        return [self._convert_id_to_token(int(i)) for i in ids if int(i) not in skip]

    # ---- decoding ------------------------------------------------------------------------------------------
    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """Runs of pieces through SentencePiece, command tokens as their strings, joined without spaces: the
        normalizer already dropped the whitespace around them. Ids outside the vocabulary are skipped."""
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        out, run = [], []
        for i in map(int, token_ids):
            if 0 <= i < self._sp_size:
                run.append(i)
                continue
            if run:
                out.append(self.sp.decode(run))
                run = []
            if i in self._canonical and not skip_special_tokens:
                out.append(self._canonical[i])
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._decode(self.convert_tokens_to_ids(tokens))

    # ---- saving ----------------------------------------------------------------------------------------------
    def _save_vocabulary_files(self, folder: Path) -> list[str]:
        (folder / MODEL_FILE).write_bytes(self._model_proto)
        return [str(folder / MODEL_FILE)]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        return tuple(self._save_vocabulary_files(Path(save_directory)))
