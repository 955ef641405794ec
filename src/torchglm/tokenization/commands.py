"""Command tokens: the ids the original GLM framework gave them, and its rule for finding them in text.

A GLM checkpoint learned one embedding per command-token id, so these layouts are facts to reproduce, not
choices: each family appends its command tokens after the base vocabulary in a fixed order (and reuses base
ids where the vocabulary already has them). The order matters for two things besides the ids: an id shared by
several strings decodes as the *last* of them (the original built its id->token map in this order), and the
count is the original's ``num_command_tokens``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class CommandToken:
    """One command token: ``name`` as the original called it (``pad``, ``ENC``, ``gMASK``...), its string and id.

    ``lstrip`` means the token eats the whitespace on its left (the original stripped the text piece before a
    [MASK]-like token, so ``"in [MASK]"`` encodes like ``"in[MASK]"`` for the byte-level families).
    """

    name: str
    token: str
    id: int
    lstrip: bool = False


@dataclass(frozen=True)
class CommandLayout:
    """The command tokens of one family, in the original's order, and the vocabulary size before model padding."""

    tokens: tuple[CommandToken, ...]
    num_tokens: int

    def id(self, name: str) -> int | None:
        """The id of the command named ``name`` (original names: pad, eos, ENC, sep, MASK, unk, sop, ...)."""
        return self.by_name.get(name)

    @cached_property
    def by_name(self) -> dict[str, int]:
        return {token.name: token.id for token in self.tokens}

    @cached_property
    def canonical(self) -> dict[int, str]:
        """Id -> the string it decodes as: the last command with that id, as in the original's map."""
        return {token.id: token.token for token in self.tokens}

    @cached_property
    def string_to_id(self) -> dict[str, int]:
        return {token.token: token.id for token in self.tokens}

    @property
    def aliases(self) -> list[str]:
        """Strings that are command tokens but not their id's canonical string (RoBERTa's ``<|endoftext|>``)."""
        canonical = self.canonical
        return sorted({t.token for t in self.tokens if canonical[t.id] != t.token})


def _task_tokens(start: int, add_task_mask: bool, add_decoder_mask: bool, lstrip: bool) -> list[CommandToken]:
    """[gMASK], [sMASK] (task masks), then [dBLOCK] (decoder mask), numbered from ``start``."""
    tokens = []
    if add_task_mask:
        tokens += [CommandToken("gMASK", "[gMASK]", start, lstrip), CommandToken("sMASK", "[sMASK]", start + 1, lstrip)]
    if add_decoder_mask:
        tokens.append(CommandToken("dBLOCK", "[dBLOCK]", start + len(tokens)))
    return tokens


def _layout(tokens: list[CommandToken], base_size: int) -> CommandLayout:
    return CommandLayout(tuple(tokens), max([base_size - 1] + [t.id for t in tokens]) + 1)


def bert_layout(vocab: dict[str, int], add_task_mask: bool = True, add_decoder_mask: bool = False) -> CommandLayout:
    """BERT WordPiece: the five BERT specials keep their vocabulary ids (eos is [PAD], id 0), then sop, eop and
    the task masks. None strips spaces: BERT's own pre-tokenizer drops whitespace anyway."""
    base = [
        ("pad", "[PAD]"),
        ("ENC", "[CLS]"),
        ("MASK", "[MASK]"),
        ("unk", "[UNK]"),
        ("sep", "[SEP]"),
        ("eos", "[PAD]"),
    ]
    n = len(vocab)
    tokens = [CommandToken(name, token, vocab[token]) for name, token in base]
    tokens += [CommandToken("sop", "<|startofpiece|>", n), CommandToken("eop", "<|endofpiece|>", n + 1)]
    return _layout(tokens + _task_tokens(n + 2, add_task_mask, add_decoder_mask, lstrip=False), n)


def gpt2_layout(vocab: dict[str, int], add_task_mask: bool = True, add_decoder_mask: bool = False) -> CommandLayout:
    """GPT-2 BPE: pad = eos = ``<|endoftext|>``; sop, eop, [CLS], [MASK], [SEP], [UNK] appended in that order."""
    eot, n = vocab["<|endoftext|>"], len(vocab)
    tokens = [
        CommandToken("pad", "<|endoftext|>", eot),
        CommandToken("eos", "<|endoftext|>", eot),
        CommandToken("sop", "<|startofpiece|>", n),
        CommandToken("eop", "<|endofpiece|>", n + 1),
        CommandToken("ENC", "[CLS]", n + 2),
        CommandToken("MASK", "[MASK]", n + 3, lstrip=True),
        CommandToken("sep", "[SEP]", n + 4),
        CommandToken("unk", "[UNK]", n + 5),
    ]
    return _layout(tokens + _task_tokens(n + 6, add_task_mask, add_decoder_mask, lstrip=True), n)


def roberta_layout(vocab: dict[str, int], add_task_mask: bool = False, add_decoder_mask: bool = False) -> CommandLayout:
    """RoBERTa BPE: GLM's names mapped onto fairseq's specials (``[CLS]`` = ``<s>``, pad = eos = ``[SEP]`` =
    ``</s>``, ``[MASK]`` = ``<mask>``, ``[UNK]`` = ``<unk>``), then sop/eop. glm-roberta-large was trained
    without task masks, hence the default; ``[sMASK]`` typed in its text is plain text."""
    n = len(vocab)
    tokens = [
        CommandToken("pad", "<|endoftext|>", vocab["</s>"]),
        CommandToken("eos", "<|endoftext|>", vocab["</s>"]),
        CommandToken("sep", "[SEP]", vocab["</s>"]),
        CommandToken("ENC", "[CLS]", vocab["<s>"]),
        CommandToken("MASK", "[MASK]", vocab["<mask>"], lstrip=True),
        CommandToken("unk", "[UNK]", vocab["<unk>"]),
        CommandToken("sop", "<|startofpiece|>", n),
        CommandToken("eop", "<|endofpiece|>", n + 1),
    ]
    return _layout(tokens + _task_tokens(n + 2, add_task_mask, add_decoder_mask, lstrip=True), n)


def chinese_layout(
    sp_size: int, add_task_mask: bool = True, add_decoder_mask: bool = False, legacy_gmask: bool = False
) -> CommandLayout:
    """Chinese SentencePiece (``cog-pretrain.model``): everything after the 50000 pieces, with an unused id at
    +5. The default layout puts [sMASK] at +8 and [gMASK] at +9; ``legacy_gmask`` reproduces the layout
    glm-10b-chinese was trained with, where [gMASK] shares +7 with <|endofpiece|> and [sMASK] is +8."""
    n = sp_size
    tokens = [
        CommandToken("pad", "<|endoftext|>", n),
        CommandToken("eos", "<|endoftext|>", n),
        CommandToken("sep", "[SEP]", n + 1),
        CommandToken("ENC", "[CLS]", n + 2),
        CommandToken("MASK", "[MASK]", n + 3, lstrip=True),
        CommandToken("unk", "[UNK]", n + 4),
        CommandToken("sop", "<|startofpiece|>", n + 6),
        CommandToken("eop", "<|endofpiece|>", n + 7),
    ]
    start = n + (7 if legacy_gmask else 8)
    masks = _task_tokens(start, add_task_mask, False, lstrip=True)
    if add_task_mask and not legacy_gmask:  # the fixed layout swapped the order: [sMASK] first
        masks = [CommandToken("sMASK", "[sMASK]", start, True), CommandToken("gMASK", "[gMASK]", start + 1, True)]
    tokens += masks
    if add_decoder_mask:
        tokens.append(CommandToken("dBLOCK", "[dBLOCK]", start + len(masks)))
    return _layout(tokens, n)


class CommandSplitter:
    """The original ``EncodeAsIds`` rule, minus the text encoder: split on command-token strings, strip the
    whitespace an ``lstrip`` token eats, drop empty pieces, and treat a blank text as no tokens at all.

    The original split on one token string after another; no command string overlaps another, so a single
    leftmost scan finds the same pieces.
    """

    def __init__(self, layout: CommandLayout):
        ids = layout.string_to_id
        self.ids = ids
        self.lstrip = {t.token for t in layout.tokens if t.lstrip}
        alternatives = sorted(ids, key=len, reverse=True)
        self.pattern = re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")")

    def split(self, text: str) -> list[str | int]:
        """``text`` as a list of text pieces (str) and command ids (int), in order."""
        if not text.strip():
            return []
        parts = self.pattern.split(text)  # text, command, text, ..., text
        out: list[str | int] = []
        for i in range(0, len(parts), 2):
            piece = parts[i]
            if i + 1 < len(parts) and parts[i + 1] in self.lstrip:
                piece = piece.rstrip()
            if piece:
                out.append(piece)
            if i + 1 < len(parts):
                out.append(self.ids[parts[i + 1]])
        return out
