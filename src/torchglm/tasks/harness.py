"""An lm-evaluation-harness backend: GLM's layout behind lm-eval's three request types.

- ``loglikelihood(context, continuation)``: the continuation scored as an answer at a final blank after a
  bidirectional part A (``[CLS] context [M] [eos]``; ``unidirectional=True`` as in LAMBADA's other row);
  requests sharing a context are scored from one encoding of it.
- ``loglikelihood_rolling(text)``: every token of the text, the first one included (predicted from
  ``[CLS] [M]``), scored in the perplexity windows of ``torchglm.tasks.scoring``.
- ``generate_until(context, gen_kwargs)``: ``[CLS] context [gMASK]`` filled by the decoding core (greedy or
  sampling), the text cut at the first ``until`` string.

Use it as ``--model torchglm --model_args pretrained=PATH[,dtype=bfloat16,seq_length=N,overlap=N,mask=gMASK]``.
lm-eval 0.4.13 finds models only in its own source tree, so ``torchglm evaluate harness ...`` (lm-eval's own
command line with this backend registered) is the command to run; the package also declares the
``lm_eval.models`` entry point that later lm-eval releases read (EleutherAI/lm-evaluation-harness#4013), with
which plain ``lm_eval --model torchglm`` works. From Python: ``lm_eval.simple_evaluate(model=GLMHarnessLM(...))``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from torchglm.errors import InputError
from torchglm.generation import fill_ids

from .scoring import (
    PromptIds,
    check_seq_length,
    encode,
    score_final_blank,
    score_rows,
    window_inputs,
    window_spans,
)


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


@register_model("torchglm")
class GLMHarnessLM(LM):
    """lm-eval's ``LM`` for a GLM checkpoint folder (``pretrained``) or a loaded ``model`` + ``tokenizer``."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model=None,
        tokenizer=None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 16,
        seq_length: int | str | None = None,
        overlap: int | str | None = None,
        unidirectional: bool | str = False,
        mask: str | None = None,
        max_gen_toks: int | str = 256,
        **unused,
    ):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise InputError("--model_args needs pretrained=PATH (a torchglm or released GLM folder)")
            from torchglm.fill_cli import load

            model, tokenizer = load(pretrained, None, device or "cpu", dtype)
        elif tokenizer is None:
            raise InputError("a model passed in needs its tokenizer")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.ids = PromptIds.from_tokenizer(tokenizer, mask)
        self.seq_length = check_seq_length(int(seq_length) if seq_length is not None else None, model)
        self.overlap = int(overlap) if overlap is not None else min(256, self.seq_length - 2)
        self.unidirectional = _flag(unidirectional)
        self.batch = int(batch_size) if str(batch_size).isdigit() else 16  # "auto" -> our default
        self.max_gen_toks = int(max_gen_toks)

    # ---- loglikelihood ----------------------------------------------------------------------------------------
    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # As lm-eval's HF backend: trailing spaces of the context belong to the continuation.
        stripped = context.rstrip()
        continuation = context[len(stripped) :] + continuation
        return encode(self.tokenizer, stripped), encode(self.tokenizer, continuation)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._split(*request.args) for request in requests]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)  # context -> requests
        for i, (context, continuation) in enumerate(pairs):
            if continuation:
                groups[tuple(context)].append(i)
        contexts = list(groups)
        answers = [[pairs[i][1] for i in groups[c]] for c in contexts]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation: log 1
        if contexts:
            scores = score_final_blank(
                self.model, self.ids, [list(c) for c in contexts], answers, seq_length=self.seq_length,
                unidirectional=self.unidirectional, batch_size=self.batch,
            )  # fmt: skip
            for context, per_answer in zip(contexts, scores, strict=True):
                for i, s in zip(groups[context], per_answer, strict=True):
                    results[i] = (s.log_prob, s.is_greedy)
        for request, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owners = [], []
        for i, request in enumerate(requests):
            tokens = encode(self.tokenizer, request.args[0])
            for span in window_spans(len(tokens), self.seq_length - 1, self.overlap, score_first=True):
                part_a, block = window_inputs(tokens, span, self.ids, unidirectional=self.unidirectional)
                rows.append((part_a, [block]))
                owners.append(i)
        totals = [0.0] * len(requests)
        scores = score_rows(self.model, rows, pad_id=self.ids.pad, batch_size=self.batch)
        for owner, [s] in zip(owners, scores, strict=True):
            totals[owner] += s.log_prob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation -------------------------------------------------------------------------------------------
    def _generation_settings(self, kwargs) -> tuple[tuple[str, ...], int, bool, float]:
        kwargs = dict(kwargs or {})
        until = kwargs.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_new = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.seq_length - 2)
        temperature = float(kwargs.get("temperature", 1.0) or 0.0)
        do_sample = _flag(kwargs.get("do_sample", False)) and temperature > 0
        return until, max_new, do_sample, temperature if do_sample else 1.0

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        tok = self.tokenizer
        stop_ids = [t for t in (tok.eop_token_id, tok.eos_token_id) if t is not None]
        banned = tuple(range(len(tok), self.model.config.vocab_size))  # the model's vocabulary padding
        groups: dict[tuple, list[int]] = defaultdict(list)  # requests with the same settings decode together
        for i, request in enumerate(requests):
            groups[self._generation_settings(request.args[1])].append(i)
        outputs = [""] * len(requests)
        for (until, max_new, do_sample, temperature), members in groups.items():
            for first in range(0, len(members), self.batch):
                chunk = members[first : first + self.batch]
                contexts = []
                for i in chunk:
                    ids = encode(tok, requests[i].args[0])[-(self.seq_length - 2) :]
                    contexts.append([self.ids.cls, *ids, self.ids.mask])
                fills = fill_ids(
                    self.model, contexts, blank_ids=[self.ids.mask], sop_id=self.ids.sop, stop_ids=stop_ids,
                    pad_id=self.ids.pad, max_new_tokens=max_new, do_sample=do_sample, temperature=temperature,
                    banned_ids=banned,
                )  # fmt: skip
                for i, [blank] in zip(chunk, fills, strict=True):
                    text = tok.decode(blank.token_ids, skip_special_tokens=True)
                    for stop in until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    outputs[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs

    @property
    def device(self) -> torch.device:
        return self.model.device
