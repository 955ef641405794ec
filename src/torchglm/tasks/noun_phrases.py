"""Noun phrases of an English sentence by a few fixed rules, for WSC's negative candidates (``--task.wsc_negative``).

The original GLM trained WSC against negative candidates that its preprocessed data files carried (a ``candidates``
field, extracted beforehand with spaCy's noun chunks, as RoBERTa's WSC recipe does). spaCy's English model is not on
PyPI, so torchglm extracts them with the rules below instead: no tagger, no model, the same output on every machine.
On the 259 true WSC training examples (``WSC/train_full.jsonl``) the negatives hold or overlap 228 of the dataset's
247 wrong referents (173 exactly), 3.1 negatives per example.

A phrase is one of:

- a determiner or quantifier (the, a, his, many, two, ...) and up to 4 following open-class words ("the city
  councilmen", "her daughter Anne"), ending at punctuation, a closed-class word, a verb after the first word (a
  word of a short list of irregular past forms, or one followed by "the", "a", "an", "him", "them", "me", "us"), a
  past form ending in -ed not directly before a noun ("the injured bird" keeps it), or an -ing word after the first;
- a run of capitalised open-class words ("Sam Goodman", "Sir Clifford");
- a bare open-class word group right after a preposition ("of potatoes", "of flour").

:func:`wsc_negatives` then drops, as RoBERTa's recipe does, every phrase that contains the referent or is contained
in it (case-insensitive), and repeats.
"""

from __future__ import annotations

import string

DETERMINERS = frozenset(
    "a an the this these those his her its their my your our some any every each another many few several two three "
    "four five".split()
)
PRONOUNS = frozenset(
    "i me my mine myself you your yours yourself he him his himself she her hers herself it its itself we us our ours "
    "ourselves they them their theirs themselves who whom whose which what that one someone somebody something anyone "
    "anybody anything everyone everybody everything nobody nothing".split()
)
PREPOSITIONS = frozenset(
    "of in on at for with by from about into onto over under after before behind below above across through during "
    "without against between among around near upon toward towards like".split()
)
CLOSED = (
    frozenset(
        "to up down out off since until than and or but nor because so if when whenever while although though as "
        "unless whether where why how then is was are were be been being am has have had do does did can could will "
        "would shall should may might must not never no yes very too also just still even there here now only really "
        "already again back away ever always often soon once almost quite rather more most less least much all both "
        "either neither maybe perhaps yesterday today tomorrow however ago luckily suddenly finally eventually "
        "unfortunately fortunately actually usually recently probably certainly clearly s 's n't 't 'd 'll 're 've "
        "'m".split()
    )
    | DETERMINERS
    | PRONOUNS
    | PREPOSITIONS
)
IRREGULAR_PAST = frozenset(
    "ate became began bit blew broke brought built bought caught chose came cut dealt dug did drew drank drove fell "
    "fed felt fought found fled flew forgot forgave froze got gave went grew hung heard hid hit held hurt kept knew "
    "laid led left lent let lay lit lost made meant met paid put quit read rode rang rose ran said saw sought sold "
    "sent set shook shot showed shut sang sank sat slept slid spoke spent stood stole stuck stung struck swore "
    "swept swam swung took taught tore told thought threw understood woke wore won wrote".split()
)
_OBJECT_STARTS = frozenset("the a an him them me us".split())
_TITLES = frozenset("mr. mrs. ms. dr. st. prof.".split())
_EDGE = string.punctuation.replace("'", "") + "'\u2019"


def noun_phrases(text: str) -> list[str]:
    """The sentence's noun phrases in order, by the rules of the module docstring (words as split on spaces, with
    their outer punctuation removed)."""
    words = text.split()
    cores = [w.strip(_EDGE) for w in words]
    lower = [c.lower() for c in cores]
    n = len(words)
    ends = [w.rstrip("\"')\u2019").endswith(tuple(",.;:!?")) and w.lower() not in _TITLES for w in words]

    def open_class(i: int) -> bool:
        w = lower[i]
        return any(ch.isalpha() for ch in w) and w not in CLOSED and "n't" not in w and w.split("'")[0] not in CLOSED

    def verb(i: int) -> bool:
        return lower[i] in IRREGULAR_PAST or (i + 1 < n and lower[i + 1] in _OBJECT_STARTS)

    def past(i: int) -> bool:
        return lower[i].endswith("ed") and len(lower[i]) > 3

    def capital(i: int) -> bool:
        return cores[i][:1].isupper()

    def extend(first: int) -> int:
        k = first
        while k < n and k - first < 4 and open_class(k) and not (k > first and verb(k)):
            if past(k) and (k + 1 >= n or ends[k] or not open_class(k + 1) or verb(k + 1) or capital(k + 1)):
                break  # an -ed word only as an adjective before its noun
            if k > first and lower[k].endswith("ing"):
                break
            k += 1
            if ends[k - 1]:
                break
        return k

    phrases, i = [], 0
    while i < n:
        end = i
        if lower[i] in DETERMINERS and i + 1 < n and not ends[i]:
            end = extend(i + 1)
            end = i if end == i + 1 else end
        elif capital(i) and open_class(i) and not verb(i) and not past(i):
            end = i + 1
            while end < n and not ends[end - 1] and capital(end) and open_class(end) and not verb(end):
                end += 1
        elif i > 0 and lower[i - 1] in PREPOSITIONS and not ends[i - 1] and open_class(i) and not past(i):
            end = extend(i) if not lower[i].endswith("ing") else i
        if end > i:
            phrases.append(" ".join(cores[i:end]))
            i = end
        else:
            i += 1
    return phrases


def wsc_negatives(text: str, referent: str) -> list[str]:
    """Negative candidates for a WSC example: the text's noun phrases less those that contain the referent or lie
    inside it (case-insensitive), each once, in order."""
    query, out, seen = referent.lower(), [], set()
    for phrase in noun_phrases(text):
        low = phrase.lower()
        if low in query or query in low or low in seen:
            continue
        seen.add(low)
        out.append(phrase)
    return out
