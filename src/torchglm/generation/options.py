"""How a block is decoded: every knob of the search, checked at once, and transformers' logits processors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class GenerationOptions:
    """How each blank is decoded. Every limit counts tokens of one blank, never of the whole text.

    Example::

        options = GenerationOptions(max_new_tokens=32, num_beams=4, no_repeat_ngram_size=3)
        results = fill(model, tokenizer, ["Tsinghua University is located in [MASK]."], options=options)
    """

    max_new_tokens: int = 64
    """Most tokens generated for one blank, its end token (eop/eos) not counted."""
    min_new_tokens: int = 0
    """Fewest tokens for one blank: the end tokens are banned until then."""
    num_beams: int = 1
    """1: greedy search or sampling; more: beam search over that many beams per text."""
    num_return_sequences: int = 1
    """Beam search: the best this many finished fills of each blank, best first (at most num_beams)."""
    length_penalty: float = 1.0
    """Beam search ranks a finished fill by its summed log-probability / (generated tokens) ** length_penalty."""
    early_stopping: bool | str = False
    """Beam search: True ends a blank once num_beams fills finished; False once no running beam is likely to
    beat them (transformers' heuristic); "never" once none can (exact for length_penalty <= 0)."""
    beam_scorer: str = "transformers"
    """How beam search measures a fill's length and when it stops. "transformers": the length counts the end
    token, a text stops once its best running beam divided by the tokens so far cannot beat its finished fills.
    "glm": the original GLM's seq2seq scorer (its copy of an early transformers ``BeamSearchScorer``): the
    length leaves the end token out, the stop test divides the step's best candidate by the tokens before the
    step, beams still running at max_new_tokens join the finished fills, and greedy search (num_beams=1) is a
    one-beam search, so its score is length-normalised too."""
    no_repeat_ngram_size: int = 0
    """Ban any n-gram of this size from repeating inside one fill (0: off)."""
    repetition_penalty: float = 1.0
    """Divide (or multiply, for negative scores) the scores of tokens already in the fill (1.0: off)."""
    banned_ids: tuple[int, ...] = ()
    """Token ids never generated (glm-10b-chinese needs 50009 banned)."""
    do_sample: bool = False
    """Sample each token instead of taking the most likely one; temperature, top_k and top_p shape it."""
    temperature: float = 1.0
    top_k: int = 0
    """Sample among the k most likely tokens only (0: all)."""
    top_p: float = 1.0
    """Sample among the most likely tokens whose probabilities sum to top_p (1.0: all)."""
    seed: int | None = None
    """Seed of the sampling generator: the same seed and inputs give the same fills (None: torch's global RNG)."""

    def __post_init__(self):
        self.banned_ids = tuple(int(i) for i in self.banned_ids)
        for name in ("max_new_tokens", "num_beams", "num_return_sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GenerationOptions.{name} must be an integer >= 1, got {value!r}")
        for name in ("min_new_tokens", "no_repeat_ngram_size", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"GenerationOptions.{name} must be an integer >= 0, got {value!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"GenerationOptions.min_new_tokens ({self.min_new_tokens}) is over "
                f"max_new_tokens ({self.max_new_tokens})"
            )
        if not self.temperature > 0:
            raise ValueError(f"GenerationOptions.temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationOptions.top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"GenerationOptions.repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"GenerationOptions.early_stopping must be True, False or 'never', got {self.early_stopping!r}"
            )
        if self.beam_scorer not in ("transformers", "glm"):
            raise ValueError(f"GenerationOptions.beam_scorer must be 'transformers' or 'glm', got {self.beam_scorer!r}")
        if self.beam_scorer == "glm" and self.do_sample:
            raise ValueError("GenerationOptions: beam_scorer 'glm' is a beam search; it does not sample")
        if self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"GenerationOptions.num_return_sequences ({self.num_return_sequences}) is over num_beams "
                f"({self.num_beams}): beam search returns at most its beams"
            )
        if self.do_sample and self.num_beams > 1:
            raise ValueError("GenerationOptions: sampling with num_beams > 1 is not supported; pick one")
        if any(i < 0 for i in self.banned_ids):
            raise ValueError(f"GenerationOptions.banned_ids must be token ids >= 0, got {list(self.banned_ids)}")

    @classmethod
    def resolve(cls, options: GenerationOptions | None, overrides: dict) -> GenerationOptions:
        """``options`` (or the defaults) with keyword overrides; an unknown keyword is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        return replace(options or cls(), **overrides)


def build_logits_processors(
    options: GenerationOptions, stop_ids: Sequence[int], device
) -> tuple[LogitsProcessorList, LogitsProcessorList]:
    """``(processors, warpers)`` from transformers' classes, in the order ``generate`` applies them.

    Processors shape the scores for every strategy (beam search applies them to log-probabilities, as
    transformers does); warpers only reshape the sampling distribution. They are called with the tokens
    generated so far for the blank as ``input_ids`` (not the context, not ``<|startofpiece|>``): repetition is
    judged inside a fill, not against the context, which a fill is often meant to echo; the original GLM's
    seq2seq decoding does the same.
    """
    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(options.repetition_penalty)))
    if options.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size))
    if options.banned_ids:
        processors.append(SuppressTokensLogitsProcessor(options.banned_ids, device=device))
    if options.min_new_tokens:
        processors.append(MinNewTokensLengthLogitsProcessor(0, options.min_new_tokens, list(stop_ids), device=device))
    warpers = LogitsProcessorList()
    if options.do_sample:
        if options.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(float(options.temperature)))
        if options.top_k:
            warpers.append(TopKLogitsWarper(options.top_k))
        if options.top_p < 1.0:
            warpers.append(TopPLogitsWarper(float(options.top_p)))
    return processors, warpers
