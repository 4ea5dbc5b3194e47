"""The model-facing half of a task: a kind says which head a trial trains, how it loads the
model, how it encodes training data, its loss (or the model's own), how it predicts, and the
probe the analyses read. One instance serves one trial (it holds the tokenizer once loaded)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from pefteval.device import MODEL_DTYPES
from pefteval.models import ModelSource
from pefteval.probe import Probe
from pefteval.train import Encoded


class TaskKind:
    name: ClassVar[str]
    # what apply_method trains besides the method: a new "classification" or "span" head, or
    # none ("lm": the decoder's own LM head answers)
    head: ClassVar[str]
    qa_mode: ClassVar[str | None] = None

    def __init__(self, task: Any, training: Any, seed: int, data: Any = None):
        self.task, self.hp, self.seed = task, training, seed
        self.data = data  # the trial's DataConfig (what a kind needs of it: MT-Bench's answer length)
        self.tokenizer: Any = None
        self.is_decoder = False
        self.notes: list[str] = []  # what the kind had to change (left-out or shortened examples)
        self.left_out = 0  # training examples that could not be encoded (a prompt too long to learn from)

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def paper_lora_targets(self) -> bool:
        """Whether LoRA without target_modules takes the paper's decoder targets."""
        return False

    # the loss on a training batch; None: the model's own (from the batch's labels)
    loss: Callable[[nn.Module, dict[str, Any]], Any] | None = None

    def load_model(self, source: ModelSource, config: Any) -> nn.Module:
        """The pretrained model, on the CPU, loaded with ``load_options()``; ``kinds.load_placed``
        moves it to the trial's device."""
        raise NotImplementedError

    def load_options(self) -> dict[str, Any]:
        """How the weights load: in ``training.model_dtype``, with ``training.attn_implementation``."""
        return {"dtype": MODEL_DTYPES[self.hp.model_dtype], "attn_implementation": self.hp.attn_implementation}

    def encode_train(self, examples: Sequence[Any]) -> Encoded:
        raise NotImplementedError

    def predict(self, model: nn.Module, examples: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def probe(self, examples: Sequence[Any], n: int) -> Probe | None:
        """The analyses' fixed batch: the first ``n`` validation examples, encoded as for training."""
        raise NotImplementedError

    def save(self, run_dir: Path) -> None:
        """Files of the kind's own beside predictions.json (the k-shot sample of a few-shot trial)."""

    def record_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"task_kind": self.name, "is_decoder": self.is_decoder}
        if self.qa_mode:
            fields["qa_mode"] = self.qa_mode
        return fields


@dataclass
class Predictor:
    """A trained model with its kind: ``predict`` answers a list of examples in batches (what the
    attacks against a trained model query)."""

    kind: TaskKind
    model: nn.Module
    model_id: str = ""

    def predict(self, examples: list[Any]) -> list[Any]:
        return self.kind.predict(self.model, examples)
