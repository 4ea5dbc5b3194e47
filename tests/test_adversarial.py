"""The generated Adversarial SQuAD sets: AddAnsCtx, AddNegAns, AddAny, AddAnyExtend, their cache and CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pefteval.config import AttackConfig, DataConfig
from pefteval.errors import UserError
from pefteval.tasks import QAExample
from pefteval.tasks.squad import adversarial_sources, make_splits
from pefteval.tasks.squad import attacks as adv
from pefteval.tasks.squad.data import read_squad_json, source_id
from pefteval.tasks.squad.metrics import normalize_answer
from pefteval.tasks.squad.statements import FALLBACK, negated_statement, statement_or_fallback

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV, ADDSENT = DATA / "squad" / "dev-v1.1.json", DATA / "adversarial_squad" / "AddSent.json"


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PEFTEVAL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def real() -> tuple[list[QAExample], list[QAExample]]:
    """(AddSent's 1,000 source questions from SQuAD dev, all of dev)."""
    if not DEV.is_file() or not ADDSENT.is_file():
        pytest.skip(f"real SQuAD data not found under {DATA}")
    dev = read_squad_json(DEV)
    by_id = {x.id: x for x in dev}
    return [by_id[i] for i in adversarial_sources(read_squad_json(ADDSENT))], dev


def qa(qid: str, question: str, context: str, answer: str, title: str = "T") -> QAExample:
    return QAExample(qid, question, context, (answer,), (context.index(answer),), title)


def distractor_words(variant: QAExample, source: QAExample) -> list[str]:
    text = appended(variant, source)
    assert text.endswith(".")  # a word sequence is closed with a period, as in Jia & Liang's script
    return text[:-1].split()


def appended(variant: QAExample, source: QAExample) -> str:
    assert variant.context.startswith(source.context + " ")
    return variant.context[len(source.context) + 1:]


def offsets_valid(x: QAExample) -> bool:
    return all(x.context[s:s + len(a)] == a for a, s in zip(x.answers, x.answer_starts))


# --- AddAnsCtx ---------------------------------------------------------------------------------

def test_sentence_spans_keep_abbreviations_and_initials():
    text = "Dr. Smith moved to the U.S. in 1990. J. R. R. Tolkien wrote it. Then it rained!"
    sentences = [text[s:e] for s, e in adv.sentence_spans(text)]
    assert sentences == ["Dr. Smith moved to the U.S. in 1990.", "J. R. R. Tolkien wrote it.", "Then it rained!"]


def test_add_ans_ctx_appends_the_answer_sentence_without_the_answer():
    context = "Denver is a city. In 2016 the Denver Broncos won Super Bowl 50 at Levi's Stadium. It rained."
    source = qa("q1", "Who won Super Bowl 50?", context, "Denver Broncos")
    [variant] = adv.attack("AddAnsCtx", [source], AttackConfig(), pool=[source])
    assert variant.id == "q1-AddAnsCtx-0" and source_id(variant.id) == "q1"
    assert (variant.question, variant.answers, variant.answer_starts, variant.title) == \
        (source.question, source.answers, source.answer_starts, source.title)
    assert appended(variant, source) == "In 2016 the won Super Bowl 50 at Levi's Stadium."
    assert offsets_valid(variant)


def test_add_ans_ctx_removes_every_answer_token_and_tidies():
    context = "The game was played on February 7, 2016, at Levi's Stadium. February was cold."
    source = qa("q2", "When was the game played?", context, "February 7, 2016")
    [variant] = adv.add_ans_ctx([source])
    assert appended(variant, source) == "The game was played, at Levi's Stadium."


def test_add_ans_ctx_on_real_data(real):
    sources, _ = real
    variants = adv.attack("AddAnsCtx", sources[:200], AttackConfig(), pool=sources)
    assert len(variants) >= 195  # a sentence that is all answer gets no variant
    by_source = {x.id: x for x in sources}
    for variant in variants:
        source = by_source[source_id(variant.id)]
        start, end = adv.answer_sentence(source)
        assert source.answer_starts[0] >= start and source.answer_starts[0] + len(source.answers[0]) <= end
        distractor = appended(variant, source)
        answer_words = set(normalize_answer(source.answers[0]).split()) - adv._STOPWORDS
        assert not answer_words & set(normalize_answer(distractor).split())
        assert distractor in variant.context and offsets_valid(variant)


# --- AddNegAns ---------------------------------------------------------------------------------

@pytest.mark.parametrize("question, answer, statement", [
    ("What team won Super Bowl 50?", "Carolina Panthers", "Carolina Panthers did not win Super Bowl 50."),
    ("When did the war end?", "1945", "The war did not end in 1945."),
    ("Who did the Broncos defeat in the AFC Championship?", "New England Patriots",
     "The Broncos did not defeat New England Patriots in the AFC Championship."),
    ("What is the capital of France?", "Lyon", "The capital of France is not Lyon."),
    ("Where was Nikola Tesla born?", "Vienna", "Nikola Tesla was not born in Vienna."),
    ("How many touchdowns did Newton throw?", "3", "Newton did not throw 3 touchdowns."),
    ("In what year was the university founded?", "1890", "The university was not founded in 1890."),
    ("Whose army defeated the Saxons?", "William", "William's army did not defeat the Saxons."),
    ("Which company makes the iPhone?", "Samsung", "Samsung does not make the iPhone."),
    ("To whom did Luther write the letter?", "the Pope", "Luther did not write the letter to the Pope."),
    ("What was the stadium named after?", "a general", "The stadium was not named after a general."),
    ("How much did the project cost?", "$5 million", "The project did not cost $5 million."),
    ("Who was elected president in 1990?", "John Smith", "John Smith was not elected president in 1990."),
    ("The Broncos defeated which team?", "Arizona", "The Broncos did not defeat Arizona."),
    ("According to the report, what is the main cause?", "smog",
     "According to the report, the main cause is not smog."),
    ("How many Super Bowl titles have the Broncos won?", "3", "The Broncos have not won 3 Super Bowl titles."),
    ("At what temperature will oxygen condense?", "90 K", "Oxygen will not condense at 90 K."),
    ("Why are ctenophores rare as fossils?", "their size",
     "Ctenophores are not rare as fossils because of their size."),
    ("Who first proved the postulate?", "Euler", "Euler did not first prove the postulate."),
    ("John Mayow died in what year?", "1679", "John Mayow did not die in 1679."),
    ("Who can vote?", "citizens", "Citizens cannot vote."),
    ("In what century did the history of the steam engine begin?", "the first",
     "The history of the steam engine did not begin in the first."),
    ("What day was the game played on?", "May 5", "The game was not played on May 5."),
])
def test_question_to_negated_statement(question, answer, statement):
    assert negated_statement(question, answer) == statement


def test_fallback_template_when_no_rule_applies():
    assert negated_statement("Name one way the group protested", "sit-ins") is None
    text, ruled = statement_or_fallback("Name one way the group protested", "sit-ins")
    assert not ruled and text == FALLBACK.format(question="Name one way the group protested", answer="sit-ins")
    assert " not " in text


def test_answer_types():
    assert [adv.answer_type(a) for a in ["1995", "the 1970s", "February 7, 2016", "19th century"]] == ["date"] * 4
    assert [adv.answer_type(a) for a in ["24–10", "two", "about 50", "$2 million"]] == ["number"] * 4
    assert [adv.answer_type(a) for a in ["Denver Broncos", "Levi's Stadium", "Zond 5", "Duke of Normandy"]] == \
        ["name"] * 4
    assert adv.answer_type("a decline of organized labor") == "other"


def test_add_neg_ans_uses_a_fake_answer_of_the_same_type():
    ctx = "Some text about things."
    pool = [qa("p1", "When did it start?", "It started in 1990. " + ctx, "1990"),
            qa("p2", "When did it stop?", "It stopped in 1066. " + ctx, "1066"),
            qa("p3", "Who led it?", "Anna Smith led it. " + ctx, "Anna Smith"),
            qa("p4", "How many came?", "About 40 came. " + ctx, "40")]
    source = qa("s1", "When did the war end?", "The war ended in 1990. " + ctx, "1990")
    [variant] = adv.attack("AddNegAns", [source], AttackConfig(seed=3), pool=[*pool, source])
    assert appended(variant, source) == "The war did not end in 1066."  # the only year that is not gold
    assert offsets_valid(variant) and variant.id == "s1-AddNegAns-0"


def test_add_neg_ans_on_real_data_is_seeded_and_subset_stable(real):
    sources, dev = real
    variants = adv.attack("AddNegAns", sources[:300], AttackConfig(), pool=dev)
    assert len(variants) == 300
    for source, variant in zip(sources, variants):
        statement = appended(variant, source)
        assert re.search(r"\b(?:not|cannot)\b", statement), statement
        assert offsets_valid(variant)
    fakes = {normalize_answer(x.answers[0]) for x in dev}
    for source, variant in zip(sources[:50], variants):  # the fake answer is some other dev answer
        assert any(f and f in normalize_answer(appended(variant, source)) for f in fakes - {
            normalize_answer(a) for a in source.answers})
    assert adv.attack("AddNegAns", sources[:20], AttackConfig(), pool=dev) == variants[:20]
    other_seed = adv.attack("AddNegAns", sources[:20], AttackConfig(seed=1), pool=dev)
    assert other_seed != variants[:20]


def test_fake_answer_never_equals_gold():
    pool = [qa(f"p{i}", "When?", f"In {y}.", y) for i, y in enumerate(["1990", "the 1990", "1990."])]
    source = qa("s", "When did it end?", "It ended in 1990.", "1990")
    fake = adv._FakeAnswers.build(pool).choose(source, adv._rng(0, source, "AddNegAns"))
    assert fake is None or normalize_answer(fake) != "1990"


# --- AddAny / AddAnyExtend -------------------------------------------------------------------------

POOL_TEXT = "the river flows past old stone houses and green fields while farmers sell bread at the market"


class Fooled:
    """A fake model: right unless the context holds ``trigger`` ``times`` times; counts calls and queries."""

    model_id = "fake-model"

    def __init__(self, trigger: str = "banana", times: int = 1) -> None:
        self.trigger, self.times, self.calls, self.queries = trigger, times, 0, {}

    def predict(self, examples: list[QAExample]) -> list[str]:
        self.calls += 1
        for x in examples:
            self.queries[source_id(x.id)] = self.queries.get(source_id(x.id), 0) + 1
        return ["wrong" if re.findall(r"\w+", x.context).count(self.trigger) >= self.times else x.answers[0]
                for x in examples]


def any_sources(n: int = 3) -> list[QAExample]:
    return [qa(f"a{i}", f"Which banana did farmer {i} sell?", f"Farmer {i} sold the Cavendish variety today.",
               "Cavendish") for i in range(n)]


def test_add_any_finds_the_fooling_word_and_stops():
    model = Fooled("banana")  # a question word, so always in the candidate vocabulary
    settings = AttackConfig(seed=0, distractor_words=4, candidates=3, max_passes=2, max_queries=1000)
    sources = any_sources()
    variants = adv.attack("AddAny", sources, settings, pool=[qa("p", "q", POOL_TEXT, "river")], model=model)
    assert [x.id for x in variants] == [f"a{i}-AddAny-0" for i in range(3)]
    for source, variant in zip(sources, variants):
        words = distractor_words(variant, source)
        assert len(words) == 4 and "banana" in words and offsets_valid(variant)
    # question words are candidates at every step: the first step finds it, then each question stops
    assert model.calls == 2 and all(n <= 1 + 3 + 5 for n in model.queries.values())


def test_add_any_respects_the_query_budget_and_batches():
    model = Fooled("never-in-the-vocabulary")
    settings = AttackConfig(seed=0, distractor_words=5, candidates=4, max_passes=3, max_queries=11)
    adv.attack("AddAny", any_sources(6), settings, pool=[qa("p", "q", POOL_TEXT, "river")], model=model)
    # 1 initial + up to 4 common + 5 question words ("which banana did farmer sell"), then the rest
    assert model.queries == {f"a{i}": 11 for i in range(6)}
    assert model.calls == 1 + 2  # one call per search step for all six questions together
    unlimited = Fooled("never-in-the-vocabulary")
    settings = AttackConfig(seed=0, distractor_words=5, candidates=4, max_passes=3, max_queries=1200)
    adv.attack("AddAny", any_sources(6), settings, pool=[qa("p", "q", POOL_TEXT, "river")], model=unlimited)
    assert unlimited.calls == 1 + 5 * 3  # every step of every pass, six questions per call
    assert all(1 + 15 * 4 <= n <= 1 + 15 * 9 for n in unlimited.queries.values())


def test_add_any_is_seeded():
    pool = [qa("p", "q", POOL_TEXT, "river")]
    settings = AttackConfig(seed=5, distractor_words=6, candidates=3, max_passes=1)
    run = lambda s, srcs: adv.attack("AddAny", srcs, s, pool=pool, model=Fooled("nothing"))  # noqa: E731
    first = run(settings, any_sources(4))
    assert run(settings, any_sources(4)) == first
    assert run(settings, any_sources(2)) == first[:2]  # per-question generators: subsets agree
    assert run(settings.model_copy(update={"seed": 6}), any_sources(4)) != first


def test_add_any_extend_draws_from_the_passage():
    # "Cavendish" occurs only in the passages; AddAny cannot find it, AddAnyExtend can (the model is
    # fooled by a second "Cavendish", the first being the passage's own)
    model = Fooled("Cavendish", times=2)
    settings = AttackConfig(seed=0, distractor_words=2, candidates=60, max_passes=1)
    pool = [qa("p", "q", POOL_TEXT, "river")]
    plain = adv.attack("AddAny", any_sources(2), settings, pool=pool, model=model)
    assert all("Cavendish" not in distractor_words(v, s) for v, s in zip(plain, any_sources(2)))
    extended = adv.attack("AddAnyExtend", any_sources(2), settings, pool=pool, model=Fooled("Cavendish", times=2))
    assert all("Cavendish" in distractor_words(v, s) for v, s in zip(extended, any_sources(2)))
    assert extended[0].id == "a0-AddAnyExtend-0"


def test_common_words_are_the_most_frequent_lower_case_words():
    pool = [qa("p1", "q", "the cat and the dog. The Cat ran", "cat"), qa("p2", "q", "the dog barked", "dog"),
            qa("p3", "q", "the dog barked", "dog")]  # a repeated passage counts once
    assert adv.common_words(pool, 3) == ["the", "dog", "and"]


def test_attack_errors():
    source = any_sources(1)
    with pytest.raises(UserError, match="AddAnsCtx, AddNegAns, AddAny, AddAnyExtend"):
        adv.attack("AddSomething", source, AttackConfig(), pool=source)
    for name in ("AddAny", "AddAnyExtend"):
        with pytest.raises(UserError, match="--model"):
            adv.attack(name, source, AttackConfig(), pool=source, model=None)


# --- cache and files -------------------------------------------------------------------------------

def test_generated_set_is_cached(tmp_path):
    sources, pool = any_sources(3), [qa("p", "q", POOL_TEXT, "river")]
    settings = AttackConfig(distractor_words=3, candidates=5, max_passes=1)
    model = Fooled("nothing")
    first = adv.generated_set("AddAny", sources, settings, pool=pool, model=model, source_key="k")
    assert first[:3] == sources and [x.id for x in first[3:]] == [f"a{i}-AddAny-0" for i in range(3)]
    cached = list(adv.cache_dir().glob("AddAny-*.json"))
    assert len(cached) == 1 and adv.cache_dir() == tmp_path / "cache" / "adversarial"
    assert cached[0] == adv.cache_path("AddAny", sources, settings, model, "k")
    calls = model.calls
    again = adv.generated_set("AddAny", sources, settings, pool=pool, model=model, source_key="k")
    assert again == first and model.calls == calls  # read back, the model is not queried
    adv.generated_set("AddAny", sources, settings.model_copy(update={"seed": 1}), pool=pool, model=model,
                      source_key="k")
    assert len(list(adv.cache_dir().glob("AddAny-*.json"))) == 2 and model.calls > calls


def test_model_free_cache_key_ignores_the_model():
    sources = any_sources(2)
    key = adv.cache_key("AddAnsCtx", sources, AttackConfig(), None, "k")
    assert adv.cache_key("AddAnsCtx", sources, AttackConfig(), Fooled(), "k") == key
    assert adv.cache_key("AddAnsCtx", sources[:1], AttackConfig(), None, "k") != key
    assert adv.cache_key("AddAnsCtx", sources, AttackConfig(), None, "other") != key


def test_written_json_round_trips(tmp_path):
    sources = [qa("q1", "Who won?", "The Broncos won. It was cold.", "Broncos", "Super Bowl"),
               qa("q2", "Was it cold?", "The Broncos won. It was cold.", "cold", "Super Bowl"),
               qa("q3", "Who sang?", "Coldplay sang.", "Coldplay", "Halftime")]
    items = [*sources, *adv.attack("AddAnsCtx", sources, AttackConfig(), pool=sources)]
    path = tmp_path / "out" / "set.json"
    adv.write_squad_json(path, items)
    data = json.loads(path.read_text())
    assert [a["title"] for a in data["data"]] == ["Super Bowl", "Halftime"]
    assert len(data["data"][0]["paragraphs"][0]["qas"]) == 2  # grouped by context
    assert sorted(read_squad_json(path), key=lambda x: x.id) == sorted(items, key=lambda x: x.id)
    assert not list(path.parent.glob(".*.tmp"))


def test_generated_sets_at_data_load_time(real):
    sources, dev = real
    addsent = read_squad_json(ADDSENT)
    cfg = DataConfig(adversarial_sets=["AddSent", "AddAnsCtx", "AddNegAns", "AddAny"], max_adversarial_questions=5)
    splits = make_splits(dev[:50], dev, {"AddSent": addsent}, cfg, DATA)
    for name in ("AddAnsCtx", "AddNegAns"):
        groups = {source_id(x.id) for x in splits.adversarial[name]}
        assert len(groups) == 5 and len(splits.adversarial[name]) >= 9
    assert len(splits.model_attacks["AddAny"]) == 5


# --- CLI ---------------------------------------------------------------------------------------------

def invoke(*args: str):
    from pefteval.cli import app

    return CliRunner().invoke(app, ["adversarial", "generate", *args])


def test_cli_generates_add_ans_ctx(real, tmp_path):
    out = tmp_path / "aac.json"
    result = invoke("squad", "--attack", "AddAnsCtx", "--out", str(out), "--max-examples", "5",
                    "--data-dir", str(DATA))
    assert result.exit_code == 0, result.output
    assert "generated" in result.output and str(out) in result.output
    items = read_squad_json(out)
    sources = real[0][:5]
    assert {x.id for x in items if source_id(x.id) == x.id} == {x.id for x in sources}
    variants = [x for x in items if x.id.endswith("-AddAnsCtx-0")]
    assert len(variants) == 5 and all(offsets_valid(x) for x in variants)
    again = invoke("squad", "--attack", "AddAnsCtx", "--out", str(tmp_path / "again.json"), "--max-examples", "5",
                   "--data-dir", str(DATA))
    assert again.exit_code == 0 and "cache hit" in again.output
    assert (tmp_path / "again.json").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("args, message", [
    (["squad", "--attack", "AddEverything"], "AddAnsCtx, AddNegAns, AddAny, AddAnyExtend"),
    (["glue", "--attack", "AddAnsCtx"], "unknown dataset"),
    (["squad", "--attack", "AddAny"], "--model RUN_DIR"),
    (["squad", "--attack", "AddAnyExtend"], "--model RUN_DIR"),
])
def test_cli_errors(tmp_path, args, message):
    result = invoke(*args, "--out", str(tmp_path / "x.json"), "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x.json").exists()
