"""Tasks: one module per task family, each turning examples into GLM inputs and model outputs into metrics.

- :mod:`.scoring`: the shared zero-shot layouts (an answer at a final blank; windows over a long text) on
  ``torchglm.generation.score``.
- :mod:`.language_model`: LAMBADA and perplexity (WikiText, any UTF-8 text).
- :mod:`.multiple_choice`: zero-shot multiple choice from JSON lines.
- :mod:`.harness`: the lm-evaluation-harness backend (needs ``pip install torchglm[eval]``; not imported here).
"""

from .language_model import (
    LambadaExample,
    LambadaResult,
    PerplexityResult,
    PerplexityText,
    evaluate_lambada,
    evaluate_perplexity,
    read_lambada,
    read_perplexity_text,
    wikitext_detokenize,
)
from .multiple_choice import ChoiceExample, MultipleChoiceResult, evaluate_multiple_choice, read_multiple_choice
from .scoring import PromptIds, WindowSpan, final_blank_inputs, score_final_blank, window_inputs, window_spans

__all__ = [
    "ChoiceExample",
    "LambadaExample",
    "LambadaResult",
    "MultipleChoiceResult",
    "PerplexityResult",
    "PerplexityText",
    "PromptIds",
    "WindowSpan",
    "evaluate_lambada",
    "evaluate_multiple_choice",
    "evaluate_perplexity",
    "final_blank_inputs",
    "read_lambada",
    "read_multiple_choice",
    "read_perplexity_text",
    "score_final_blank",
    "window_inputs",
    "window_spans",
    "wikitext_detokenize",
]
