"""Generated Adversarial SQuAD sets: AddAnsCtx, AddNegAns, AddAny and AddAnyExtend.

No released files exist for these four sets (see shared/data/adversarial_squad/SOURCE.md), so
pefteval generates them from SQuAD v1.1 dev questions, seeded and cached. Every variant appends a
distractor to the end of its source paragraph (after one space), so the gold answer offsets stay
valid; it keeps the question, answers and title and has the id ``<source id>-<attack>-0``.

- AddAnsCtx: the answer's own sentence with the answer removed.
- AddNegAns: a negated statement of the question with a fake answer of the same coarse type.
- AddAny (Jia & Liang, EMNLP 2017): a ``distractor_words``-word sequence found by local search
  against the trained model, minimising the F1 of its prediction.
- AddAnyExtend: AddAny with a wider candidate pool (passage words and rarer common words).

docs/adversarial_squad.md states each algorithm precisely.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pefteval.errors import DataError, UserError
from pefteval.tasks.base import QAExample
from pefteval.tasks.squad.data import GENERATED, MODEL_ATTACKS, source_id, squad_examples
from pefteval.tasks.squad.metrics import normalize_answer, squad_scores
from pefteval.tasks.squad.statements import statement_or_fallback

ATTACKS = GENERATED + MODEL_ATTACKS
MODEL_FREE = GENERATED
COMMON_WORDS = 1000  # AddAny's common-word list (Jia & Liang took theirs from the Brown corpus)
EXTENDED_WORDS = 5000  # AddAnyExtend also draws from ranks 1,001-5,000 of the same frequency list
MAX_FAKE_WORDS = 5  # fake answers longer than this read badly inside a statement
# part of the cache key: bump it when a change to the generators changes their output, so that
# sets cached by an older pefteval are regenerated rather than reused
GENERATOR_VERSION = 1


class ModelScorer(Protocol):
    """A trained QA model as the attacks see it."""

    model_id: str  # identifies the trained model (goes into the cache key)

    def predict(self, examples: list[QAExample]) -> list[str]:
        """The predicted answer text of each example, batched internally."""
        ...


# --- files and cache ------------------------------------------------------------------------------

def cache_dir() -> Path:
    """$PEFTEVAL_CACHE_DIR/adversarial if set, else ~/.cache/pefteval/adversarial."""
    root = os.environ.get("PEFTEVAL_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "pefteval") / "adversarial"


def write_squad_json(path: Path, examples: list[QAExample]) -> None:
    """SQuAD v1.1 layout, grouped by title and then context in first-appearance order, written
    atomically (a temporary file in the same folder, then a rename) so readers never see half a file."""
    articles: dict[str, dict[str, list[dict]]] = {}
    for ex in examples:
        qa = {"id": ex.id, "question": ex.question,
              "answers": [{"text": t, "answer_start": s} for t, s in zip(ex.answers, ex.answer_starts)]}
        articles.setdefault(ex.title, {}).setdefault(ex.context, []).append(qa)
    data = [{"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
            for title, paras in articles.items()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": "1.1", "data": data}, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_key(name: str, sources: Sequence[QAExample], settings: Any, model: ModelScorer | None,
              source_key: str) -> str:
    # the model-free sets must not depend on whether a model happened to be passed
    model_id = model.model_id if model is not None and name not in MODEL_FREE else None
    payload = [source_key, name, settings.model_dump(mode="json"), model_id, [s.id for s in sources],
               GENERATOR_VERSION]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(name: str, sources: Sequence[QAExample], settings: Any, model: ModelScorer | None,
               source_key: str, directory: Path | None = None) -> Path:
    key = cache_key(name, sources, settings, model, source_key)
    return (directory if directory is not None else cache_dir()) / f"{name}-{key[:16]}.json"


def _read_cached(path: Path) -> list[QAExample] | None:
    """A cached set, or None when there is none or it is damaged (it is then regenerated and
    replaced). Read here, not through the data-file helpers of ``pefteval.tasks.base``: a cache is
    not input data, so it must not enter a trial's data fingerprint (``track_data_reads``)."""
    try:
        return squad_examples(json.loads(path.read_text(encoding="utf-8")), path)
    except (OSError, ValueError, DataError):  # absent or unreadable, not UTF-8 or not JSON, not SQuAD
        return None


def _in_set_order(items: list[QAExample], sources: Sequence[QAExample]) -> list[QAExample]:
    """A cached file is grouped by paragraph; restore "originals, then variants", in source order."""
    position = {s.id: i for i, s in enumerate(sources)}
    return sorted(items, key=lambda x: (x.id != source_id(x.id), position.get(source_id(x.id), len(position)), x.id))


def generated_set(name: str, sources: list[QAExample], settings: Any, *, pool: list[QAExample],
                  model: ModelScorer | None, source_key: str, cache_dir: Path | None = None) -> list[QAExample]:
    """The sources followed by their variants; read from the cache when this exact set (same
    source data, attack, settings, model and source ids) was generated before."""
    _check_attack(name, model)
    path = cache_path(name, sources, settings, model, source_key, cache_dir)
    cached = _read_cached(path)
    if cached is not None:
        return _in_set_order(cached, sources)
    items = [*sources, *attack(name, sources, settings, pool=pool, model=model)]
    write_squad_json(path, items)
    return items


# --- the attacks -----------------------------------------------------------------------------------

def _check_attack(name: str, model: ModelScorer | None) -> None:
    if name not in ATTACKS:
        raise UserError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    if name not in MODEL_FREE and model is None:
        raise UserError(f"{name} searches against a trained model; pass one (on the command line: "
                        "--model RUN_DIR, the run directory of a finished SQuAD trial)")


def attack(name: str, sources: list[QAExample], settings: Any, *, pool: list[QAExample],
           model: ModelScorer | None = None) -> list[QAExample]:
    """The variants of ``sources`` (at most one each, in source order); ``pool`` is the question
    set fake answers and common words are drawn from (SQuAD dev)."""
    _check_attack(name, model)
    if name == "AddAnsCtx":
        return add_ans_ctx(sources)
    if name == "AddNegAns":
        return add_neg_ans(sources, pool, settings.seed)
    assert model is not None
    return add_any(sources, settings, pool, model, extend=name == "AddAnyExtend")


def _variant(source: QAExample, name: str, distractor: str) -> QAExample:
    # appended after the original text: the gold offsets into the context stay valid
    return replace(source, id=f"{source.id}-{name}-0", context=f"{source.context} {distractor}")


def _rng(seed: int, source: QAExample, name: str) -> random.Random:
    # one generator per question (string seeds hash stably): a subset of sources gets the same variants
    return random.Random(f"{seed}:{source.id}:{name}")


# --- AddAnsCtx ---------------------------------------------------------------------------------------

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "mt", "ft", "gen",
                  "col", "lt", "rev", "prof", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "aug", "sep",
                  "sept", "oct", "nov", "dec", "c", "ca", "approx", "fig", "vol", "al", "op", "cf", "pp", "est"}
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_STOPWORDS = {"of", "in", "on", "at", "by", "for", "to", "and", "or", "from", "with", "as", "is", "was", "s"}


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of ``text``: a split after ./!/? followed by
    space and a capital or digit, except after an abbreviation or an initial ("U.S.", "J. R.")."""
    spans, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start:m.start()].split()
        last = before[-1].rstrip(".") if before else ""
        initial = len(last) == 1 and last.isupper()  # "J. R. R. Tolkien", but "a factor of q. Wilson"
        if last.lower() in _ABBREVIATIONS or initial or re.fullmatch(r"(?:\w\.)+\w", last):
            continue
        end = m.end() - (len(m.group()) - len(m.group().rstrip()))
        spans.append((start, end))
        start = m.end()
    spans.append((start, len(text.rstrip())))
    return [(s, e) for s, e in spans if e > s]


def answer_sentence(source: QAExample) -> tuple[int, int]:
    """The span of the sentence(s) holding the first gold answer (merged if the answer crosses a split)."""
    a_start = source.answer_starts[0]
    a_end = a_start + len(source.answers[0])
    covering = [(s, e) for s, e in sentence_spans(source.context) if s < max(a_end, a_start + 1) and e > a_start]
    if not covering:
        return 0, len(source.context)
    return covering[0][0], covering[-1][1]


def _tidy(text: str) -> str:
    text = re.sub(r"\(\s*[,;:]?\s*\)|\[\s*\]|\"\s*\"|“\s*”", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    # a function word left hanging before punctuation where the answer was: "played on, at."
    text = re.sub(r"\s+(?:on|at|in|of|by|the|a|an|to|for|from|with|and|as)(?=\s*[,.;:!?]|$)", "", text)
    text = re.sub(r"[,;:]\s*([.!?])$", r"\1", text)
    return text.strip(" ,;:")


def remove_answer(sentence: str, offset: int, answer: str) -> str | None:
    """``sentence`` without the answer: its span at ``offset``, its other occurrences (any case), and
    every word that is one of its content words after SQuAD normalisation; None if no word is left."""
    drop = [False] * len(sentence)

    def mark(a: int, b: int) -> None:
        for i in range(max(a, 0), min(b, len(sentence))):
            drop[i] = True

    mark(offset, offset + len(answer))
    for m in re.finditer(re.escape(answer), sentence, re.IGNORECASE):
        mark(m.start(), m.end())
    content = set(normalize_answer(answer).split()) - _STOPWORDS
    for m in re.finditer(r"\S+", sentence):
        core = m.group().strip(".,;:!?\"'“”‘’()[]")
        if core and normalize_answer(core) in content:
            lead = m.group().index(core)
            mark(m.start() + lead, m.start() + lead + len(core))
    text = _tidy("".join(c for c, d in zip(sentence, drop) if not d))
    if not re.search(r"[^\W\d_]", text):
        return None
    return text if re.search(r"[.!?][\"'”’)\]]*$", text) else text + "."


def add_ans_ctx(sources: list[QAExample]) -> list[QAExample]:
    """Append the answer's sentence with the answer removed; a question whose sentence is nothing
    but its answer gets no variant (it is then scored on its original alone)."""
    out = []
    for source in sources:
        start, end = answer_sentence(source)
        distractor = remove_answer(source.context[start:end], source.answer_starts[0] - start, source.answers[0])
        if distractor:
            out.append(_variant(source, "AddAnsCtx", distractor))
    return out


# --- AddNegAns ---------------------------------------------------------------------------------------

_MONTHS = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_YEAR = r"(?:1[0-9]{3}|20[0-9]{2}|[0-9]{3,4}s)"
_DATE = re.compile(
    rf"(?:(?:in|on|by|around|about|circa|c\.|early|late|mid|the|from|until|since|before|after)[\s-]+)*{_YEAR}"
    rf"(?:\s*(?:–|-|to|and|or)\s*{_YEAR})?(?:\s*(?:AD|BC|BCE|CE|A\.D\.|B\.C\.))?", re.IGNORECASE)
_NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                 "twenty", "thirty", "forty", "fifty", "hundred", "thousand", "million", "billion", "dozen", "half"}
_QUANTIFIERS = {"about", "over", "around", "approximately", "nearly", "almost", "more", "less", "fewer", "up", "at",
                "by", "in", "under", "roughly", "some", "only", "just", "exactly", "between", "from"} | _NUMBER_WORDS
_NAME_GLUE = {"of", "the", "and", "de", "for", "a", "an", "in", "on", "la", "le", "von", "van", "du", "del", "da"}


def answer_type(text: str) -> str:
    """Coarse type of an answer: "date" (year, decade, month, century), "number", "name" (every
    word capitalised, apart from glue words like "of") or "other"."""
    text = text.strip()
    if _DATE.fullmatch(text) or re.search(rf"\b{_MONTHS}\b", text) or re.search(r"\bcentur(?:y|ies)\b", text, re.I):
        return "date"
    words = re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d[\d,.]*", text)
    alpha = [w for w in words if w[0].isalpha() and w.lower() not in _NAME_GLUE]
    # a name may hold a number ("Zond 5", "Apollo 11"), a quantity may not ("About 50")
    name = bool(alpha) and all(w[0].isupper() for w in alpha) and words[0][0].isalpha() and \
        words[0].lower() not in _QUANTIFIERS
    if name:
        return "name"
    if words and len(words) <= 4 and any(w[0].isdigit() or w.lower() in _NUMBER_WORDS for w in words):
        return "number"
    return "other"


def question_word(question: str) -> str:
    """The question's wh-word ("how many" and "how much" count as one), or "" if it has none."""
    words = re.findall(r"[a-z]+", question.lower())
    for i, w in enumerate(words):
        if w in {"what", "which", "who", "whom", "whose", "when", "where", "why", "how"}:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            return f"how {nxt}" if w == "how" and nxt in ("many", "much") else w
    return ""


@dataclass
class _FakeAnswers:
    """First answers of the pool questions, deduplicated by normalised text and sorted, keyed by
    (coarse type, wh-word of their question) and by (coarse type, "")."""

    options: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    anything: list[tuple[str, str]] = field(default_factory=list)  # all of them, the last resort

    @classmethod
    def build(cls, pool: list[QAExample]) -> _FakeAnswers:
        seen: dict[str, tuple[str, str]] = {}
        for ex in pool:
            text = ex.answers[0].strip()
            norm = normalize_answer(text)
            if norm and len(text.split()) <= MAX_FAKE_WORDS:
                seen.setdefault(norm, (text, question_word(ex.question)))  # first spelling of each answer
        options: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for norm, (text, wh) in sorted(seen.items(), key=lambda kv: (kv[1][0], kv[0])):
            kind = answer_type(text)
            options.setdefault((kind, wh), []).append((text, norm))
            options.setdefault((kind, ""), []).append((text, norm))
        anything = sorted({o for (_, wh), opts in options.items() if wh == "" for o in opts})
        return cls(options, anything)

    def choose(self, source: QAExample, rng: random.Random) -> str | None:
        """A random answer of the source's type (from a question with the same wh-word when there is
        one) that equals none of its gold answers after normalisation; any answer as a last resort."""
        gold = {normalize_answer(a) for a in source.answers}
        kind = answer_type(source.answers[0])
        for options in (self.options.get((kind, question_word(source.question)), []),
                        self.options.get((kind, ""), []), self.anything):
            for _ in range(50):  # rejection sampling: a clash with the gold answers is rare
                if not options:
                    break
                text, norm = options[rng.randrange(len(options))]
                if norm not in gold:
                    return text
            allowed = [text for text, norm in options if norm not in gold]
            if allowed:
                return rng.choice(allowed)
        return None


def add_neg_ans(sources: list[QAExample], pool: list[QAExample], seed: int) -> list[QAExample]:
    """Append the question, turned into a negated statement of a fake answer."""
    fakes = _FakeAnswers.build(pool)
    out = []
    for source in sources:
        fake = fakes.choose(source, _rng(seed, source, "AddNegAns"))
        if fake is not None:
            statement, _ = statement_or_fallback(source.question, fake)
            out.append(_variant(source, "AddNegAns", statement))
    return out


# --- AddAny / AddAnyExtend ---------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def common_words(pool: Sequence[QAExample], n: int) -> list[str]:
    """The ``n`` most frequent lower-case alphabetic words of the pool's distinct passages
    (ties broken alphabetically, so the list depends on the data alone)."""
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for ex in pool:
        if ex.context not in seen:
            seen.add(ex.context)
            counts.update(w for w in _WORD.findall(ex.context) if w.isalpha() and w.islower())
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _words(text: str) -> list[str]:
    """Distinct alphabetic words of a text, as written, in order of appearance."""
    return list(dict.fromkeys(_WORD.findall(text)))


def _sample_at_most(words: list[str], k: int, rng: random.Random) -> list[str]:
    return list(words) if len(words) <= k else rng.sample(words, k)


def _distractor(words: list[str]) -> str:
    # Jia & Liang's script ends an added word sequence with a period
    return " ".join(words) + "."


@dataclass
class _Search:
    """The local search state of one source question."""

    source: QAExample
    name: str
    rng: random.Random
    words: list[str]  # the current distractor
    question: list[str]  # the question's words, lower-cased, always tried
    passage: list[str]  # AddAnyExtend: the passage's words, as written
    f1: float = 1.0
    queries: int = 0

    def example(self, position: int | None = None, word: str = "") -> QAExample:
        words = list(self.words)
        if position is not None:
            words[position] = word
        return _variant(self.source, self.name, _distractor(words))


@dataclass(frozen=True)
class _Vocabulary:
    common: list[str]  # the COMMON_WORDS most frequent lower-case words of the pool passages
    rare: list[str]  # AddAnyExtend: ranks COMMON_WORDS+1 .. EXTENDED_WORDS of the same list
    extend: bool

    def start(self, source: QAExample, settings: Any, name: str) -> _Search:
        rng = _rng(settings.seed, source, name)
        k = settings.distractor_words
        # Jia & Liang initialise the distractor with random common words
        init = rng.sample(self.common, k) if len(self.common) >= k else [rng.choice(self.common) for _ in range(k)]
        question = list(dict.fromkeys(w.lower() for w in _words(source.question)))
        return _Search(source, name, rng, init, question, _words(source.context) if self.extend else [])

    def candidates(self, state: _Search, position: int, k: int) -> list[str]:
        """AddAny (Jia & Liang's "add-question-words" mode): ``k`` sampled common words plus every
        question word. AddAnyExtend adds ``k`` sampled passage words and ``k`` sampled rarer common
        words. Duplicates and the word already at ``position`` are left out."""
        words = _sample_at_most(self.common, k, state.rng) + state.question
        if self.extend:
            words += _sample_at_most(state.passage, k, state.rng) + _sample_at_most(self.rare, k, state.rng)
        return [w for w in dict.fromkeys(words) if w != state.words[position]]


@functools.lru_cache(maxsize=1 << 16)
def _f1(prediction: str, answers: tuple[str, ...]) -> float:
    # memoised: a model repeats its predictions across candidates, and the official scoring is slow
    return squad_scores(prediction, answers)[1]


def _f1s(model: ModelScorer, examples: list[QAExample], sources: list[QAExample]) -> list[float]:
    predictions = model.predict(examples)
    if len(predictions) != len(examples):
        raise RuntimeError(f"the model returned {len(predictions)} predictions for {len(examples)} questions")
    return [_f1(p, s.answers) for p, s in zip(predictions, sources)]


def _step(model: ModelScorer, states: list[_Search], vocab: _Vocabulary, position: int,
          settings: Any) -> None:
    """One position of one pass for every active question, in a single model call: keep the candidate
    with the lowest F1 when it is lower than the current distractor's."""
    trials: list[tuple[_Search, str]] = []
    for state in states:
        budget = settings.max_queries - state.queries  # the last step of a question may try fewer
        trials += [(state, w) for w in vocab.candidates(state, position, settings.candidates)[:budget]]
    if not trials:
        return
    f1s = _f1s(model, [s.example(position, w) for s, w in trials], [s.source for s, _ in trials])
    best: dict[int, tuple[float, str]] = {}
    for (state, word), f1 in zip(trials, f1s):
        state.queries += 1
        if f1 < best.get(id(state), (state.f1, ""))[0]:
            best[id(state)] = (f1, word)
    for state in states:
        if id(state) in best:
            state.f1, state.words[position] = best[id(state)][0], best[id(state)][1]


def add_any(sources: list[QAExample], settings: Any, pool: list[QAExample], model: ModelScorer,
            extend: bool = False) -> list[QAExample]:
    """AddAny (or AddAnyExtend): local search over a ``distractor_words``-word distractor, one position
    at a time (each pass visits every position once, in a seeded random order shared by all questions,
    as Jia & Liang shuffle theirs), for up to ``max_passes`` passes, stopping a question at F1 0 or at
    ``max_queries`` model evaluations (the initial distractor's counts as one)."""
    name = "AddAnyExtend" if extend else "AddAny"
    ranked = common_words(pool, EXTENDED_WORDS if extend else COMMON_WORDS)
    if not ranked:
        raise DataError("AddAny needs passages with lower-case words to build its vocabulary")
    vocab = _Vocabulary(ranked[:COMMON_WORDS], ranked[COMMON_WORDS:], extend)
    states = [vocab.start(s, settings, name) for s in sources]
    if states:
        for state, f1 in zip(states, _f1s(model, [s.example() for s in states], sources)):
            state.f1, state.queries = f1, 1
    positions = list(range(settings.distractor_words))
    steps = [p for n in range(settings.max_passes)
             for p in random.Random(f"{settings.seed}:{name}:pass{n}").sample(positions, len(positions))]
    for position in steps:
        active = [s for s in states if s.f1 > 0 and s.queries < settings.max_queries]
        if not active:
            break
        _step(model, active, vocab, position, settings)
    return [_variant(s.source, name, _distractor(s.words)) for s in states]
