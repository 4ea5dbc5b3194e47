"""Rule-based conversion of a SQuAD question into a negated declarative statement (for AddNegAns).

``negated_statement("When did the war end?", "1945")`` gives ``"The war did not end in 1945."``.
No parser or tagger is used (pefteval must run offline with no NLP models): a question is split
on whitespace and read with word lists and English morphology. The rules cover the common
shapes of SQuAD questions:

- the wh-phrase (what/which/whose + noun phrase, who/whom/when/where/why, how many/much + noun,
  how + adjective, how), optionally after a preposition ("In what year", "To whom") or after
  a leading adjunct kept as it is ("In 1517, ...", "According to X, ...");
- an inverted auxiliary (do/does/did, is/are/was/were, has/have/had, can/could/will/would/...):
  the subject noun phrase is found, the statement is "<subject> <aux> not <predicate>" and the
  fake answer fills the gap: after the verb (objects), after a stranded preposition
  ("named after X"), right after "is not" (copula), or at the end with a preposition for
  adjuncts (when: "in"/"on", where: "in", why: "because of", how: "by", "In what year": "in");
- a subject question ("Who founded X?"): "<fake> did not found X" — the verb is turned into
  "did/does/do not" + its base form (irregular-verb table and regular -ed/-s rules);
- a wh-phrase inside the sentence ("X was played in what city?"): the wh-phrase is replaced by
  the fake answer and the first auxiliary (or past-tense verb) before it is negated.

``negated_statement`` returns None when no rule applies; the caller then uses the documented
fallback template ``FALLBACK``.
"""

from __future__ import annotations

import re

FALLBACK = 'The answer to "{question}" is not {answer}.'

WH = {"what", "which", "who", "whom", "whose", "when", "where", "why", "how"}
BE = {"is", "are", "was", "were", "am"}
DO = {"do", "does", "did"}
HAVE = {"has", "have", "had"}
MODAL = {"can", "could", "will", "would", "should", "may", "might", "must", "shall"}
AUX = BE | DO | HAVE | MODAL
PREPS = {"in", "on", "at", "by", "for", "from", "to", "with", "during", "after", "before", "since", "until",
         "under", "of", "about", "into", "through", "against", "among", "between", "within", "over", "near",
         "toward", "towards", "upon", "across", "behind", "beyond", "despite", "like", "around", "along", "as",
         "per", "throughout", "onto", "without", "via", "according", "up", "out", "off", "down", "besides"}
DETS = {"the", "a", "an", "this", "that", "these", "those", "his", "her", "its", "their", "our", "my", "your",
        "some", "many", "most", "each", "every", "all", "both", "any", "several", "such", "another"}
PRONOUNS = {"he", "she", "it", "they", "we", "you", "i", "someone", "somebody", "anyone", "everyone"}
RELATIVES = {"that", "which", "who", "whom", "whose", "where", "when", "while", "whilst", "because", "if",
             "although", "though", "whereas", "unless"}
CONNECTORS = {"of", "the", "and", "de", "for", "la", "le", "von", "van", "du", "del", "da", "&", "y", "on"}
ADVERBS = {"first", "also", "originally", "initially", "once", "still", "never", "ever", "later", "finally",
           "eventually", "formally", "officially", "primarily", "mainly", "usually", "often", "now", "most",
           "commonly", "generally", "typically", "previously", "recently", "currently", "actually", "already",
           "sometimes", "always", "best", "again", "then", "just", "even"}
ADJECTIVES = {"first", "second", "third", "fourth", "fifth", "last", "next", "new", "old", "main", "most", "best",
              "only", "other", "same", "current", "former", "early", "late", "great", "major", "final", "total",
              "top", "following", "previous", "entire", "whole", "different", "largest", "biggest", "highest",
              "oldest", "earliest", "latest", "greatest", "smallest", "longest", "primary", "official", "modern",
              "ancient", "famous", "common", "average", "specific", "particular", "annual", "big", "small", "large",
              "high", "low", "long", "short", "young", "original", "present", "certain", "various", "several"}
TIME_NOUNS = {"year", "years", "century", "decade", "month", "day", "date", "time", "season", "era", "period",
              "week", "hour", "age", "dynasty"}
NUMBER_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
                "hundred", "thousand", "million", "billion", "dozen", "half"}
MONTHS = {"january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"}
WEEKDAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"}
NOT_VERBS = {"hundred", "red", "bed", "shed", "sacred", "naked", "wicked", "kindred", "hatred", "indeed", "speed",
             "seed", "need", "feed", "breed", "creed", "greed", "deed", "weed", "reed", "sled", "ted"}
# common verbs in their base form: a do-question's main verb ("did the war end") ends its subject
BASE_VERBS = set("""be have do say get make go know take see come think look want give use find tell ask work seem
feel try leave call keep let begin help show hear play run move live believe bring happen write provide sit stand lose
pay meet include continue set learn change lead understand watch follow stop create speak read allow add spend grow
open walk win offer remember love consider appear buy wait serve die send expect build stay fall cut reach kill remain
suggest raise pass sell require report decide pull return explain hope develop carry break receive agree support hit
produce eat cover catch draw choose cause point end start form rely replace become hold join found establish defeat
cost last score throw contain mean travel vote rule marry attend prevent host claim name invent discover
design describe occur exist happen believe refer belong relate respond depend result enter reduce increase
introduce control take put set""".split())
# past tense and past participle -> base form
IRREGULAR = {
    "arose": "arise", "arisen": "arise", "awoke": "awake", "was": "be", "were": "be", "been": "be", "bore": "bear",
    "born": "bear", "borne": "bear", "beaten": "beat", "beat": "beat", "became": "become", "began": "begin",
    "begun": "begin", "bent": "bend", "bound": "bind", "bit": "bite", "bitten": "bite", "blew": "blow",
    "blown": "blow", "broke": "break", "broken": "break", "brought": "bring", "built": "build", "burnt": "burn",
    "bought": "buy", "caught": "catch", "chose": "choose", "chosen": "choose", "came": "come", "dealt": "deal",
    "dug": "dig", "did": "do", "done": "do", "drew": "draw", "drawn": "draw", "drank": "drink", "drunk": "drink",
    "drove": "drive", "driven": "drive", "ate": "eat", "eaten": "eat", "fell": "fall", "fallen": "fall",
    "fed": "feed", "felt": "feel", "fought": "fight", "found": "find", "fled": "flee", "flew": "fly",
    "flown": "fly", "forbade": "forbid", "forbidden": "forbid", "forgot": "forget", "forgotten": "forget",
    "forgave": "forgive", "forgiven": "forgive", "froze": "freeze", "frozen": "freeze", "got": "get",
    "gotten": "get", "gave": "give", "given": "give", "went": "go", "gone": "go", "grew": "grow", "grown": "grow",
    "hung": "hang", "had": "have", "heard": "hear", "hid": "hide", "hidden": "hide", "held": "hold",
    "kept": "keep", "knew": "know", "known": "know", "laid": "lay", "led": "lead", "left": "leave", "lent": "lend",
    "lit": "light", "lost": "lose", "made": "make", "meant": "mean", "met": "meet", "mistook": "mistake",
    "mistaken": "mistake", "overcame": "overcome", "overthrew": "overthrow", "overthrown": "overthrow",
    "overtook": "overtake", "overtaken": "overtake", "oversaw": "oversee", "overseen": "oversee", "paid": "pay",
    "proven": "prove", "rebuilt": "rebuild", "rode": "ride", "ridden": "ride", "rang": "ring", "rung": "ring",
    "rose": "rise", "risen": "rise", "ran": "run", "said": "say", "saw": "see", "seen": "see", "sought": "seek",
    "sold": "sell", "sent": "send", "shook": "shake", "shaken": "shake", "shone": "shine", "shot": "shoot",
    "shown": "show", "shrank": "shrink", "shrunk": "shrink", "sang": "sing", "sung": "sing", "sank": "sink",
    "sunk": "sink", "sat": "sit", "slept": "sleep", "slid": "slide", "spoke": "speak", "spoken": "speak",
    "spent": "spend", "spun": "spin", "sprang": "spring", "sprung": "spring", "stood": "stand", "stole": "steal",
    "stolen": "steal", "stuck": "stick", "struck": "strike", "stricken": "strike", "swore": "swear",
    "sworn": "swear", "swept": "sweep", "swam": "swim", "swum": "swim", "took": "take", "taken": "take",
    "taught": "teach", "tore": "tear", "torn": "tear", "told": "tell", "thought": "think", "threw": "throw",
    "thrown": "throw", "understood": "understand", "undertook": "undertake", "undertaken": "undertake",
    "underwent": "undergo", "undergone": "undergo", "upheld": "uphold", "woke": "wake", "woken": "wake",
    "wore": "wear", "worn": "wear", "wove": "weave", "woven": "weave", "won": "win", "withdrew": "withdraw",
    "withdrawn": "withdraw", "withstood": "withstand", "wrote": "write", "written": "write", "foresaw": "foresee",
    "foreseen": "foresee", "misled": "mislead", "rewrote": "rewrite", "rewritten": "rewrite", "sewn": "sew",
    "sown": "sow", "put": "put", "cut": "cut", "hit": "hit", "let": "let", "cast": "cast", "cost": "cost",
    "hurt": "hurt", "quit": "quit", "spread": "spread", "split": "split", "shut": "shut", "broadcast": "broadcast",
    "forecast": "forecast", "fit": "fit", "bet": "bet",
}
NOT_ADVERBS = {"family", "supply", "assembly", "monopoly", "italy", "july", "rally", "ally", "early", "only", "holy",
               "reply", "anomaly", "butterfly", "jelly", "belly", "bully", "fly"}
PARTICLES = {"up", "out", "off", "down"}
VOWELS = set("aeiou")
_QUOTES = "\"'“”‘’([{"


# --- word tests ---------------------------------------------------------------------------------

def _low(tok: str) -> str:
    return tok.lower().strip(",.;:!?\"“”()[]{}")


def _is_cap(tok: str) -> bool:
    """Starts a name, number or quotation: "Super", "50", "$2", "\"Bold"."""
    word = tok.lstrip(_QUOTES)
    return bool(word) and (word[0].isupper() or word[0].isdigit() or word[0] in "$£€%")


def _possessive(tok: str) -> bool:
    return tok.endswith(("'s", "’s", "s'", "s’"))


def _verb_like(tok: str) -> bool:
    """A past tense or participle: irregular table, or a regular -ed form."""
    low = _low(tok)
    if _is_cap(tok) or low in NOT_VERBS:
        return False
    return low in IRREGULAR and low not in {"put", "cut", "hit", "let", "cast", "cost", "fit", "bet", "spread",
                                            "split", "shut", "quit", "hurt"} or (len(low) > 3 and low.endswith("ed"))


def _function(low: str) -> bool:
    return low in AUX or low in PREPS or low in DETS or low in PRONOUNS or low in WH or low in RELATIVES or \
        low in {"and", "or", "but", "than", "not", "no", "so"}


def _content(tok: str) -> bool:
    """A lower-case word that can be part of a noun phrase's head."""
    word = tok.lstrip(_QUOTES)
    return bool(word) and word[0].islower() and not _function(_low(tok)) and not _verb_like(tok)


def _plural(tok: str) -> bool:
    low = _low(tok)
    return low.endswith("s") and not low.endswith(("ss", "us", "is", "'s", "’s")) or low in {"people", "children"}


def _adverb(tok: str) -> bool:
    low = _low(tok)
    return low in ADVERBS or (low.endswith("ly") and len(low) > 4 and low not in NOT_ADVERBS)


def _adjective(low: str) -> bool:
    return low in ADJECTIVES or low in NUMBER_WORDS or "-" in low or low.endswith(
        ("ic", "al", "ous", "ive", "ful", "ian", "ese", "ish", "ary", "ern", "less", "able", "ible", "ant", "ent"))


def _starts_np(tok: str) -> bool:
    low = _low(tok)
    return low in DETS or low in PRONOUNS or _is_cap(tok) or _possessive(tok)


def _is_prep(tok: str) -> bool:
    return _low(tok) in PREPS


# --- verbs --------------------------------------------------------------------------------------

def _needs_e(stem: str) -> bool:
    """Whether a regular verb's -ed stem lost a silent e ("produc" -> "produce", "start" -> "start")."""
    if len(stem) < 2:
        return False
    last, prev, prev2 = stem[-1], stem[-2], stem[-3] if len(stem) > 2 else "a"
    single = prev in VOWELS and prev2 not in VOWELS  # consonant-vowel-consonant ending: "nam", "decid"
    rules = {
        "c": True, "v": True, "z": True,
        "s": prev != "s" and not stem.endswith("cus"),
        "t": stem.endswith("creat") or (prev == "a" and prev2 not in "eo") or (prev == "u" and prev2 != "o")
        or (prev == "o" and prev2 not in VOWELS) or (prev == "e" and prev2 in "lp")
        or stem.endswith(("unit", "invit", "cit", "excit", "ignit")),
        "d": single, "m": single, "g": not stem.endswith("ong") and (prev in VOWELS or prev in "rn"),
        "r": prev == "u" or (prev == "i" and prev2 != "a") or (prev == "a" and prev2 != "e")
        or (prev == "o" and prev2 not in VOWELS and (len(stem) <= 4 or stem[-4] not in VOWELS)),
        "l": prev in "bcdfgkptz" or (prev in "ui" and prev2 not in VOWELS),
        "n": prev in "iu" and prev2 not in VOWELS, "p": prev in "aiy" and prev2 not in VOWELS,
        "k": prev in "aiou" and prev2 not in VOWELS, "b": prev in "iu" and prev2 not in VOWELS,
    }
    return bool(rules.get(last, False))


def base_form(verb: str) -> str:
    """The base form of a past-tense, participle or third-person verb ("won" -> "win", "founded" -> "found")."""
    low = verb.lower()
    special = {"has": "have", "does": "do", "goes": "go", "is": "be", "are": "be", "am": "be"}
    if low in special:
        return special[low]
    if low in IRREGULAR:
        return IRREGULAR[low]
    if low.endswith("ed") and len(low) > 3:
        return _base_of_ed(low)
    if low.endswith("ies") and len(low) > 4:
        return low[:-3] + "y"
    if low.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        return low[:-2]
    if low.endswith("s") and not low.endswith(("ss", "us", "is")):
        return low[:-1]
    return low


def _base_of_ed(low: str) -> str:
    if low.endswith("ied"):
        return low[:-1] if len(low) <= 4 else low[:-3] + "y"
    if low.endswith(("eed", "ued")) and not low.endswith("eeded"):
        return low[:-1]
    stem = low[:-2]
    doubled = len(stem) >= 4 and stem[-1] == stem[-2] and stem[-1] in "bdgmnprt"
    if doubled and stem[-3] in VOWELS and stem[-4] not in VOWELS:
        return stem[:-1]  # "stopped" -> "stop", "occurred" -> "occur"
    if len(stem) > 5 and stem.endswith(("ell", "oll")) and stem[-4] not in VOWELS:
        return stem[:-1]  # "controlled" -> "control", "compelled" -> "compel" (not "called", "installed")
    return stem + "e" if _needs_e(stem) else stem


def negate_verb(verb: str, plural: bool = False) -> list[str]:
    """A main verb negated with do-support: "won" -> "did not win", "owns" -> "does not own"."""
    low = verb.lower()
    if low in BE:
        return [low, "not"]
    if low in IRREGULAR or (low.endswith("ed") and low not in NOT_VERBS):
        return ["did", "not", base_form(low)]
    if low.endswith("s") and not low.endswith(("ss", "us", "is")):
        return ["does", "not", base_form(low)]
    return ["do" if plural else "did", "not", low]


def _negate_aux(aux: str) -> list[str]:
    low = aux.lower()
    return ["cannot"] if low == "can" else [low, "not"]


# --- noun phrases -------------------------------------------------------------------------------

def _modifier(tok: str, nxt: str, after_name: bool) -> bool:
    """An adjective, number or hyphenated word before a noun; "first" after a name is an adverb."""
    low = _low(tok)
    if not _adjective(low) or _possessive(tok) or (after_name and low in ADVERBS):
        return False
    return bool(nxt) and (_content(nxt) or _is_cap(nxt))


def _modifiers(toks: list[str], j: int) -> tuple[int, str | None]:
    """Skip names, numbers and adjectives before a head noun; returns (next index, last name token)."""
    last_cap = None
    while j < len(toks):
        tok, low = toks[j], _low(toks[j])
        nxt = toks[j + 1] if j + 1 < len(toks) else ""
        if _is_cap(tok) and low not in AUX and (low not in WH or last_cap):  # "Doctor Who"
            last_cap, j = tok, j + 1
        elif last_cap and low in CONNECTORS and nxt and _is_cap(nxt):
            j += 1  # "University of Chicago", "Huguenots and Walloons"
        elif _modifier(tok, nxt, after_name=last_cap is not None):
            j += 1
        else:
            return j, last_cap
    return j, last_cap


def _take_head(toks: list[str], j: int, greedy: bool = False) -> int:
    """The head noun: one lower-case word, extended through possessives and a following plural
    ("field's theory", "capitalist firms"); ``greedy`` takes a whole compound ("radio station")."""
    if j >= len(toks) or not _content(toks[j]) or _adverb(toks[j]):
        return j
    if j > 0 and _is_cap(toks[j - 1]) and _low(toks[j - 1]) not in WH and _low(toks[j]) in BASE_VERBS:
        return j  # "did the first Super Bowl take place": a base verb after a name is the verb
    j += 1
    while j < len(toks) and _content(toks[j]) and not _adverb(toks[j]):
        prev_plural = _plural(toks[j - 1])
        if not ((greedy and not prev_plural) or _possessive(toks[j - 1]) or (_plural(toks[j]) and not prev_plural)):
            break
        j += 1
    return j


def np_end(toks: list[str], i: int, greedy: bool = False) -> int:
    """Index just after the noun phrase that starts at ``i``. ``greedy`` (after what/which/how many,
    and before a participle) takes compound nouns whole; a do-question's subject must not, since its
    base verb may look like a noun ("did the war end")."""
    if i >= len(toks):
        return i
    if _low(toks[i]) in PRONOUNS:
        return i + 1
    det = _low(toks[i]) in DETS
    j = i + det
    if det and j + 1 < len(toks) and _verb_like(toks[j]) and _content(toks[j + 1]):
        j += 1  # "the armed forces"
    j, last_cap = _modifiers(toks, j)
    nxt = toks[j] if j < len(toks) else ""
    # "the NFL team" and "European empires" have a head noun after the name; "the Broncos", "Luther" do not
    head_ok = greedy or last_cap is None or _possessive(last_cap) or (det and not _plural(last_cap)) or (
        _plural(nxt) and _content(nxt))
    if head_ok:
        j = _take_head(toks, j, greedy)
    while j + 1 < len(toks) and _low(toks[j]) == "of" and (_starts_np(toks[j + 1]) or _content(toks[j + 1])):
        j = np_end(toks, j + 1, greedy)
    return j


# --- the wh-phrase ------------------------------------------------------------------------------

def _wh_index(toks: list[str]) -> int | None:
    """The wh-word the question is about: sentence-initial, after a comma or a leading preposition,
    else the last one (a wh-phrase inside the sentence)."""
    lows = [_low(t) for t in toks]
    if lows and lows[0] in WH:
        return 0
    for i in range(1, len(toks)):
        if lows[i] in WH and (toks[i - 1].endswith(",") or (i >= 2 and toks[i - 2].endswith(",") and
                                                            lows[i - 1] in PREPS)):
            return i
    if len(toks) > 1 and lows[0] in PREPS and lows[1] in WH:
        return 1
    hits = [i for i, low in enumerate(lows) if low in WH]
    return hits[-1] if hits else None


def _wh_np(body: list[str], start: int) -> int:
    """End of the noun after what/which/how many. When no verb follows it, its first -s word was
    the verb: "What company makes the iPhone", "What river runs through Warsaw"."""
    end = np_end(body, start, greedy=True)
    nxt = body[end] if end < len(body) else ""
    if end > start and not (_low(nxt) in AUX or _verb_like(nxt)):
        verbs = [k for k in range(start, end) if _content(body[k]) and _plural(body[k])
                 and _low(body[k]) not in {"people", "children"}
                 and (k + 1 == len(body) or not _content(body[k + 1]))]
        if verbs:
            end = verbs[0]
    # "How many people in Quzhou are ...": a prepositional phrase belongs to the noun when a verb follows it
    while end < len(body) and _is_prep(body[end]) and _low(body[end]) != "of":
        after = np_end(body, end + 1, greedy=True)
        if after == end + 1 or after >= len(body) or not (_low(body[after]) in AUX or _verb_like(body[after])):
            break
        end = after
    return end


def _wh_phrase(body: list[str]) -> tuple[int, list[str], str]:
    """(end index, noun tokens, kind) of the wh-phrase at body[0]; kind is the wh-word, "many"
    (how many/much), "degree" (how + adjective) or "manner" (bare how)."""
    wh = _low(body[0])
    nxt = _low(body[1]) if len(body) > 1 else ""
    if wh in ("what", "which", "whose"):
        if nxt in AUX:
            return 1, [], wh
        start = 2 if nxt == "of" else 1
        end = _wh_np(body, start)
        return end, body[1:end], wh
    if wh == "how":
        if nxt in ("many", "much"):
            start = 3 if len(body) > 2 and _low(body[2]) == "of" else 2  # "How many of the six packages"
            end = _wh_np(body, start) if len(body) > start and _low(body[start]) not in AUX else start
            return end, body[2:end], "many"
        if nxt in AUX or not nxt:
            return 1, [], "manner"
        return 2, [], "degree"
    return 1, [], wh


# --- fillers: the fake answer as subject/object or as an adjunct ----------------------------------

def _answer_words(answer: str) -> list[str]:
    """The answer's words; a leading article or preposition is lower-cased ("By the 1970s" inside a
    sentence reads "by the 1970s"; the sentence start is capitalised again at the end)."""
    words = answer.split()
    if words and _low(words[0]) in DETS | PREPS and words[0][:1].isupper() and words[0][1:].islower():
        words[0] = words[0].lower()
    return words


def _time_prep(answer: str) -> list[str]:
    words = answer.split()
    low = [_low(w) for w in words]
    if not low or low[0] in PREPS:
        return []
    day_and_month = any(w in MONTHS for w in low) and any(re.fullmatch(r"\d{1,2}(st|nd|rd|th)?", w) for w in low)
    return ["on"] if day_and_month or any(w in WEEKDAYS for w in low) else ["in"]


def _adjunct(kind: str, noun: list[str], prep: str | None, answer: str) -> list[str] | None:
    """The fake answer with its preposition when the wh-phrase is an adjunct, else None."""
    words = _answer_words(answer)
    first = _low(words[0]) if words else ""
    if prep and kind != "whose":
        return [prep.lower(), *words]
    if kind == "when" or (kind in ("what", "which") and noun and _low(noun[-1]) in TIME_NOUNS):
        return _time_prep(answer) + words
    if kind == "where":
        return ([] if first in PREPS else ["in"]) + words
    if kind == "why":
        reason = first in {"because", "to", "for", "due", "since", "so", "as", "in", "by"}
        return ([] if reason else ["because", "of"]) + words
    if kind == "manner":
        return ([] if first in PREPS else ["by"]) + words
    return None


def _filler(kind: str, noun: list[str], answer: str) -> list[str]:
    """The fake answer standing for the wh-phrase as a subject or object."""
    words = _answer_words(answer)
    if kind == "whose" and noun:
        return [answer + ("'" if answer.endswith("s") else "'s"), *noun]
    numeric = all(_is_cap(w) and not w.lstrip(_QUOTES)[0].isalpha() or _low(w) in NUMBER_WORDS for w in words)
    if kind == "many" and noun and numeric:
        return [*words, *noun]  # "3" + "touchdowns"
    return words


# --- clauses ------------------------------------------------------------------------------------

def _gap(pred: list[str]) -> int | None:
    """Where a stranded preposition leaves the object's gap: "named after _", "held at _ for X"."""
    stranded = [i for i, tok in enumerate(pred) if _is_prep(tok) and (
        i + 1 == len(pred) or _is_prep(pred[i + 1]) or _low(pred[i + 1]) in RELATIVES)]
    if not stranded:
        return None
    i = stranded[0]
    while i + 1 in stranded:
        i += 1
    return i + 1


def _split_subject(aux: str, after: list[str]) -> int:
    """Length of the subject after an inverted auxiliary."""
    if aux in BE or aux in HAVE:  # a passive or perfect participle ends the subject: "was the university founded"
        for k, tok in enumerate(after):
            low = _low(tok)
            if low in AUX or low in RELATIVES and k > 0:
                break
            if k > 0 and _verb_like(tok):
                while k > 1 and _adverb(after[k - 1]):
                    k -= 1
                return k
        return max(np_end(after, 0, greedy=aux in BE), 1)
    k = max(np_end(after, 0), 1)
    # a do-question's predicate starts with its verb, so a preposition still belongs to the subject:
    # "did the Muslim Brotherhood in Palestine take"
    while k + 2 < len(after) and _is_prep(after[k]) and _low(after[k]) not in PARTICLES and (
            _starts_np(after[k + 1]) or _content(after[k + 1])):
        k = max(np_end(after, k + 1), k + 2)
    # a compound noun before a known base verb: "did the history of the steam engine begin"
    while k + 1 < len(after) and _content(after[k]) and _low(after[k]) not in BASE_VERBS and \
            _low(after[k + 1]) in BASE_VERBS:
        k += 1
    return min(k, len(after) - 1) if len(after) > 1 else k


def _inverted(aux_tok: str, after: list[str], filler: list[str], adjunct: list[str] | None,
              kind: str) -> list[str] | None:
    """"<subject> <aux> not <predicate>" with the fake answer in the gap."""
    aux = _low(aux_tok)
    if not after:
        return None
    k = _split_subject(aux, after)
    subject, pred, neg = after[:k], after[k:], _negate_aux(aux)
    verb = next((i for i, tok in enumerate(pred) if not _adverb(tok)), 0)
    gap = _gap(pred)
    if aux in BE and pred and not _verb_like(pred[verb]) and gap is None:
        if _low(pred[0]) in RELATIVES or (kind in ("what", "which", "who", "whom") and _is_prep(pred[0])):
            subject, pred = subject + pred, []  # "the manager for the Broncos is not X"
        elif adjunct is None:
            return subject + neg + filler + pred  # "Newton was not 26 during Super Bowl 50"
    if adjunct is not None:
        return subject + neg + pred + adjunct
    if not pred:
        return subject + neg + filler
    gap = verb + 1 if gap is None else gap
    return subject + neg + pred[:gap] + filler + pred[gap:]


def _has_participle(toks: list[str]) -> bool:
    """A participle right away or after the subject: "has won", "have the Broncos won" (perfect),
    not "has higher scores on standardized tests" (main verb)."""
    i = next((k for k, tok in enumerate(toks) if not _adverb(tok)), len(toks))
    if i == len(toks):
        return False
    if _verb_like(toks[i]):
        return True
    k = np_end(toks, i) if _starts_np(toks[i]) else i
    return i < k < len(toks) and _verb_like(toks[k])


def _subject_question(aux: str, after: list[str]) -> bool:
    """Whether the wh-phrase is the subject although an auxiliary follows it ("Who was born in X")."""
    if not after:
        return True
    if aux in DO:
        return False
    if aux in HAVE and not _has_participle(after):
        return True  # "has" as the main verb: "What country has higher scores"
    first = next((t for t in after if not _adverb(t)), after[0])
    if aux in MODAL:  # "Who can vote" (a base verb follows) vs "What will oxygen do"
        return _low(first) in BASE_VERBS or _verb_like(first)
    return not _starts_np(after[0])


def _as_subject(filler: list[str], rest: list[str], plural: bool) -> list[str] | None:
    """The wh-phrase is the subject: "<fake> did not <verb> ...", "<fake> was not born in X"."""
    adverbs = [t for t in rest[:2] if _adverb(t)] if len(rest) > 1 and _adverb(rest[0]) else []
    if adverbs:  # "Who first proved X" -> "<fake> did not first prove X"
        negated = _as_subject(filler, rest[1:], plural)
        return None if negated is None else _insert_adverb(negated, len(filler), rest[0])
    verb, low = rest[0], _low(rest[0])
    if low in HAVE and not _has_participle(rest[1:]):
        return filler + negate_verb(verb, plural) + rest[1:]
    if low in AUX:
        return filler + _negate_aux(low) + rest[1:]
    plausible = _verb_like(verb) or low in BASE_VERBS or low in IRREGULAR.values() or (
        _content(verb) and _plural(verb))
    if not plausible or _starts_np(verb):
        return None  # no verb where one should be: give up rather than write nonsense
    return filler + negate_verb(verb, plural) + rest[1:]


def _insert_adverb(clause: list[str], at: int, adverb: str) -> list[str]:
    """Put the adverb after the negation ("did not first prove"), which follows the subject."""
    neg = at + (2 if at + 1 < len(clause) and clause[at + 1] == "not" else 1)
    return clause[:neg] + [adverb] + clause[neg:]


def _front_question(body: list[str], prep: str | None, answer: str) -> list[str] | None:
    end, noun, kind = _wh_phrase(body)
    rest = body[end:]
    if not rest:
        return None
    adjunct = _adjunct(kind, noun, prep, answer)
    filler = _filler(kind, noun, answer)
    if adjunct is not None and _is_prep(rest[-1]) and not prep:
        adjunct = filler  # the question strands its own preposition: "What day was it played on?"
    aux = _low(rest[0])
    # "At what temperature" or "when" is never the subject; "Over how many species" can be
    can_be_subject = kind not in ("when", "where", "why", "manner", "degree") and (prep is None or kind == "many")
    if aux in AUX and not (can_be_subject and _subject_question(aux, rest[1:])):
        return _inverted(rest[0], rest[1:], filler, adjunct, kind)
    if not can_be_subject:
        return None
    plural = kind == "many" or (bool(noun) and _plural(noun[-1]))
    return _as_subject(filler, rest, plural)


def _negate_first_verb(toks: list[str]) -> list[str] | None:
    """Negate a clause's first auxiliary, else its first past-tense or -s verb; None if there is none."""
    for i, tok in enumerate(toks):
        if _low(tok) in AUX:
            return toks[:i] + _negate_aux(tok) + toks[i + 1:]
    for i, tok in enumerate(toks[1:], start=1):
        if _verb_like(tok) or (_content(tok) and _plural(tok) and _low(toks[i - 1]) not in DETS):
            return toks[:i] + negate_verb(tok) + toks[i + 1:]
    return None


def _mid_question(head: list[str], prep: str | None, body: list[str], answer: str) -> list[str] | None:
    """"X was played in what city" -> "X was not played in <fake>"; "Electrolysis of what can be
    used ..." -> "Electrolysis of <fake> cannot be used ..."."""
    end, noun, kind = _wh_phrase(body)
    middle = ([prep] if prep else []) + _filler(kind, noun, answer)
    negated = _negate_first_verb(head)
    if negated is not None:
        return negated + middle + body[end:]
    tail = _negate_first_verb(body[end:])
    return head + middle + tail if tail is not None else None


def _finish(tokens: list[str]) -> str:
    text = " ".join(t for t in tokens if t).strip()
    text = re.sub(r"\s+([,;:])", r"\1", text).rstrip(" ,;:?!")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def negated_statement(question: str, answer: str) -> str | None:
    """The question as a negated statement with ``answer`` in place of its wh-phrase, or None
    when no rule applies (the caller falls back to ``FALLBACK``)."""
    toks = question.strip().rstrip("?").split()
    k = _wh_index(toks)
    if k is None or not answer.strip():
        return None
    prep = toks[k - 1] if k > 0 and _is_prep(toks[k - 1]) else None
    head, body = toks[: k - (1 if prep else 0)], toks[k:]
    # a leading adjunct ("In 1517", "According to X,") stays in front of the statement
    comma = max((i + 1 for i, tok in enumerate(head) if tok.endswith(",")), default=0)
    prefix, core = head[:comma], head[comma:]
    if core and _negate_first_verb(core) is None:
        if _is_prep(core[0]):
            prefix, core = head, []
        elif _negate_first_verb(head) is not None:  # "X controlled three continents, Africa, Asia and which other"
            prefix, core = [], head
    clause = _mid_question(core, prep, body, answer) if core else _front_question(body, prep, answer)
    return _finish(prefix + clause) if clause else None


def statement_or_fallback(question: str, answer: str) -> tuple[str, bool]:
    """(negated statement, whether a rule applied); the fallback template always contains "not"."""
    statement = negated_statement(question, answer)
    if statement:
        return statement, True
    return FALLBACK.format(question=question.strip(), answer=answer.strip()), False
