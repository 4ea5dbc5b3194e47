"""SQuAD v1.1 reading comprehension and its adversarial sets (Table 4 and 5 of the paper).

Offline files, in the SQuAD v1.1 JSON layout:
- ``<data_dir>/squad/train-v1.1.reconstructed.json``: the training source (its answer
  offsets are first occurrences of the answer text, see its SOURCE.md);
- ``<data_dir>/squad/dev-v1.1.json``: the original test set (as in the paper);
- ``<data_dir>/adversarial_squad/AddSent.json`` and ``AddOneSent.json`` (Jia & Liang, 2017):
  the 1,000 sampled dev questions plus their adversarial copies ``<id>-high-conf-turkN``.
From the hub: ``rajpurkar/squad`` and ``stanfordnlp/squad_adversarial``.

AddAnsCtx and AddNegAns are generated from the dev questions that AddSent was built
on (``pefteval/tasks/squad/attacks.py``, seeded and cached). AddAny and AddAnyExtend
search against the trained model, so a trial generates them after training; the
loader only hands over their source questions.

Validation for epoch and grid selection is held out from the training source, never
from dev, and dev is never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pefteval.errors import DataError
from pefteval.tasks.base import (
    Prompting,
    QAExample,
    Scored,
    Task,
    TaskSplits,
    file_sha256,
    hold_out_validation,
    register,
)
from pefteval.tasks.base import shuffled as _shuffled
from pefteval.tasks.squad.attacks import generated_set
from pefteval.tasks.squad.data import (
    ADV_FILES,
    ADVERSARIAL,
    DEV_FILE,
    GENERATED,
    HUB_ADVERSARIAL,
    HUB_SQUAD,
    MODEL_ATTACKS,
    SHORT_NAMES,
    TRAIN_FILE,
    hub_split,
    read_squad_json,
    source_id,
)
from pefteval.tasks.squad.metrics import squad_metrics, squad_scores


def keep_groups(items: list[QAExample], sources: list[str]) -> list[QAExample]:
    """The items whose source question is in ``sources`` (originals and their variants)."""
    wanted = set(sources)
    return [x for x in items if source_id(x.id) in wanted]


def adversarial_sources(adversarial_file_items: list[QAExample]) -> list[str]:
    """Ids of the source dev questions of an Adversarial SQuAD file, in file order."""
    seen: dict[str, None] = {}
    for item in adversarial_file_items:
        seen.setdefault(source_id(item.id), None)
    return list(seen)


def make_splits(train_source: list[QAExample], dev: list[QAExample], adversarial: dict[str, list[QAExample]],
                cfg: Any, data_dir: Path | None) -> TaskSplits:
    notes: list[str] = []
    pool = _shuffled(train_source, cfg.split_seed)
    validation, train = hold_out_validation(pool, cfg)
    test = dev
    if cfg.max_eval_examples is not None:
        validation = validation[: cfg.max_eval_examples]
        test = _shuffled(dev, cfg.split_seed)[: cfg.max_eval_examples]
        notes.append(f"SQuAD: dev capped at {len(test)} of {len(dev)} questions, validation at {len(validation)} "
                     "(--max-eval-examples)")
    wanted = cfg.adversarial_sets if cfg.adversarial_sets is not None else list(ADVERSARIAL)
    unknown = [name for name in wanted if name not in ADVERSARIAL]
    if unknown:
        raise DataError(f"squad: unknown adversarial set(s) {', '.join(unknown)}; known: {', '.join(ADVERSARIAL)}")
    # every set is scored on the same source questions: those AddSent was built on
    reference = adversarial.get("AddSent") or next(iter(adversarial.values()), [])
    sources = adversarial_sources(reference)
    if cfg.max_adversarial_questions is not None and cfg.max_adversarial_questions < len(sources):
        sources = _shuffled(sources, cfg.split_seed)[: cfg.max_adversarial_questions]
        notes.append(f"Adversarial SQuAD: {len(sources)} of the source questions (data.max_adversarial_questions), "
                     "each scored with all its variants")
    adv_sets: dict[str, list[QAExample]] = {}
    model_attacks: dict[str, list[QAExample]] = {}
    source_key = _source_key(data_dir)
    by_id = {x.id: x for x in dev}
    source_items = [by_id[s] for s in sources if s in by_id]
    for name in wanted:
        if name in adversarial:
            adv_sets[name] = keep_groups(adversarial[name], sources)
        elif name in GENERATED:
            adv_sets[name] = generated_set(name, source_items, cfg.attack, pool=dev, model=None,
                                           source_key=source_key)
        elif name in MODEL_ATTACKS:
            model_attacks[name] = source_items
    return TaskSplits(train=train, validation=validation, test=test, adversarial=adv_sets, notes=notes,
                      train_source="train", model_attacks=model_attacks, attack_pool=dev,
                      attack_source_key=source_key)


def _source_key(data_dir: Path | None) -> str:
    """What the generated sets are made from, for their cache key: the dev file's hash, or the hub id."""
    if data_dir is None:
        return f"hub:{HUB_SQUAD}:validation"
    # the bare hex digest, as these keys have always held, so that sets cached before stay valid
    return file_sha256(data_dir / DEV_FILE).removeprefix("sha256:")


def load_squad(data_dir: Path | None, cfg: Any) -> TaskSplits:
    wanted = cfg.adversarial_sets if cfg.adversarial_sets is not None else list(ADVERSARIAL)
    need_files = set(ADV_FILES) & (set(wanted) | {"AddSent"})
    if data_dir is not None:
        train = read_squad_json(data_dir / TRAIN_FILE, "SQuAD training file")
        dev = read_squad_json(data_dir / DEV_FILE, "SQuAD dev file")
        adversarial = {name: read_squad_json(data_dir / ADV_FILES[name], f"Adversarial SQuAD {name} file")
                       for name in need_files}
    else:
        train = hub_split(None, "train")
        dev = hub_split(None, "validation")
        adversarial = {name: hub_split(name, "validation", HUB_ADVERSARIAL) for name in need_files}
    return make_splits(train, dev, adversarial, cfg, data_dir)


# --- prompts for a decoder answering generatively ---------------------------------------------

PROMPT = "Answer the question with a short span copied from the context.\n\nContext: {context}\n\nQuestion: {question}"


def render_prompt(example: QAExample, context: str | None = None) -> str:
    return PROMPT.format(context=context if context is not None else example.context,
                         question=example.question.strip())


def fit_context(tokenizer: Any, example: QAExample, budget: int) -> str:
    """The context cut to ``budget`` tokens, around the first answer (training only needs that part)."""
    enc = tokenizer(example.context, add_special_tokens=False, return_offsets_mapping=True)
    offs = enc["offset_mapping"]
    if len(offs) <= budget:
        return example.context
    answer_tok = next((t for t, (a, b) in enumerate(offs) if b > example.answer_starts[0]), 0)
    first = max(0, min(answer_tok - budget // 2, len(offs) - budget))
    return example.context[offs[first][0]:offs[first + budget - 1][1]]


def shorten_prompt(example: QAExample, tokenizer: Any, overflow: int) -> str:
    """A training prompt ``overflow`` tokens too long: its context cut around the answer."""
    n_context = len(tokenizer(example.context, add_special_tokens=False)["input_ids"])
    return render_prompt(example, fit_context(tokenizer, example, max(16, n_context - overflow - 8)))


def clean_generated(text: str) -> str:
    """The answer in a generation: its first line, without a leading "Answer:"."""
    text = text.strip()
    text = text.split("\n", 1)[0].strip()
    return text.removeprefix("Answer:").strip()


PROMPTING = Prompting(render=render_prompt, target=lambda x: x.answers[0], plain_suffix="\nAnswer:",
                      answer_prefix=" ", shorten=shorten_prompt, parse=clean_generated, paper_lora_targets=False)


# --- scoring --------------------------------------------------------------------------------------

def score_squad(predictions: Sequence[str], examples: Sequence[QAExample], adversarial: bool = False) -> Scored:
    """SQuAD EM/F1 (each example's own score is its F1). An adversarial set also gets the worst
    case per source question and ``source_*``: the plain score on its original questions, the
    clean baseline of the worst case."""
    truths = [x.answers for x in examples]
    per_example = [squad_scores(p, t)[1] for p, t in zip(predictions, truths)]
    if not adversarial:
        return Scored(squad_metrics(predictions, truths), per_example)
    groups = [source_id(x.id) for x in examples]
    metrics = squad_metrics(predictions, truths, groups)
    originals = [i for i, (x, g) in enumerate(zip(examples, groups)) if x.id == g]
    if originals:
        clean = squad_metrics([predictions[i] for i in originals], [truths[i] for i in originals])
        metrics["source_exact_match"], metrics["source_f1"] = clean["exact_match"], clean["f1"]
    return Scored(metrics, per_example)


def attack_trained_model(name: str, splits: TaskSplits, predictor: Any, cfg: Any) -> list[QAExample]:
    """AddAny / AddAnyExtend: each source question and the variants searched against ``predictor``."""
    return generated_set(name, splits.model_attacks[name], cfg.attack, pool=splits.attack_pool, model=predictor,
                         source_key=splits.attack_source_key)


def register_tasks() -> None:
    register(Task(
        name="squad", display="SQuAD", kind="qa",
        help="SQuAD v1.1 reading comprehension (EM/F1); extractive with encoders, generative with decoders",
        splits=lambda data_dir, cfg, seed=0: load_squad(data_dir, cfg),
        score=score_squad, selection_metric="f1", adversarial=ADVERSARIAL, prompting=PROMPTING,
        late_split=attack_trained_model, report_columns=("exact_match", "f1"), short_names=SHORT_NAMES,
        column_names={"exact_match": "EM", "f1": "F1"},
    ))
