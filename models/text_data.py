"""Text training data: a CSV or JSONL file of `text` and `label`, and its token batches.

`--data FILE` is the training file; `--val FILE` the evaluation file, else a seeded share of each
class of `--data` is held out, as for an image folder without `val/`. Texts are tokenised once with
the encoder's own `tokenizer.json` through `graft.artifact.text` (what the exported artifact and
the service run), and each batch is padded to its longest text.

A file that cannot be trained on as given (unknown suffix, not UTF-8, a missing column, an empty
text or label, fewer than two classes, a class missing from the evaluation file) is a `DataError`
whose one line says what was expected.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from graft.artifact.text import TOKENIZER_FILE, TextSpec, TextTokenizer, pad, truncated_indices
from graft.models.data import VAL_FRACTION, DataError, Splits, split_per_class, stratified_sample
from graft.models.features import loader
from graft.models.modules import Backbone
from graft.models.text import TextBackboneEntry

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".csv", ".jsonl")


class TextSet:
    """Labelled texts. `targets` index into `labels` (shared by a run's training and evaluation sets)."""

    def __init__(self, labels: Sequence[str], targets: np.ndarray, texts: Sequence[str]):
        self.labels = tuple(labels)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> "TextSet":
        return TextSet(self.labels, self.targets[indices], [self.texts[i] for i in indices])


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of a CSV (header row naming `text` and `label`) or JSONL file.

    Raises:
        DataError: the file is missing, not .csv/.jsonl, not UTF-8, lacks a column, or has an empty
            text or label (named by its line number).
    """
    if path.suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
        raise DataError(f"expected a text file ({' or '.join(TEXT_SUFFIXES)}) with columns text and label, got {path}")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"expected UTF-8 text in {path}, got byte 0x{error.object[error.start]:02x} "
                        f"at offset {error.start}") from None
    records: list[tuple[int, object]]
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(content, newline=""))
        missing = {"text", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"expected a CSV header with columns text and label in {path}, "
                            f"got {reader.fieldnames or 'none'}")
        records = [(reader.line_num, row) for row in reader]
    else:
        records = []
        for number, line in enumerate(content.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"expected one JSON object per line in {path}, got line {number}: {error}") from None
    rows = []
    for number, record in records:
        text = record.get("text") if isinstance(record, dict) else None
        label = record.get("label") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip() or label is None or not str(label).strip():
            raise DataError(f"expected a non-empty text and label on line {number} of {path}, "
                            f"got text {text!r:.40} and label {label!r:.40}")
        rows.append((text, str(label).strip()))
    return rows


def _text_set(rows: list[tuple[str, str]], labels: Sequence[str]) -> TextSet:
    index = {label: i for i, label in enumerate(labels)}
    return TextSet(labels, np.array([index[label] for _, label in rows], dtype=np.int64), [text for text, _ in rows])


def load_text_splits(data: str | os.PathLike, val: str | os.PathLike | None = None, *, seed: int = 0,
                     limit_train: int | None = None, limit_val: int | None = None) -> Splits:
    """Training and evaluation texts from `data` (and `val`, else a seeded stratified hold-out of `data`).

    Raises:
        DataError: a bad file (see `read_rows`), fewer than 2 classes, or evaluation labels the
            training file lacks.
    """
    rng = np.random.default_rng(seed)
    train_rows = read_rows(Path(data))
    labels = sorted({label for _, label in train_rows})
    if len(labels) < 2:
        raise DataError(f"expected at least 2 classes (labels) in {data}, got {len(labels)}: {labels}")
    if val is not None:
        val_rows = read_rows(Path(val))
        unknown = sorted({label for _, label in val_rows} - set(labels))
        if unknown:
            raise DataError(f"expected the evaluation labels of {val} to be among the training labels {labels}, "
                            f"got {unknown}")
        train, evaluation = _text_set(train_rows, labels), _text_set(val_rows, labels)
        split = f"evaluation file {Path(val).resolve()}"
    else:
        texts = _text_set(train_rows, labels)
        for index, label in enumerate(labels):
            if np.count_nonzero(texts.targets == index) < 2:
                raise DataError(f"expected at least 2 texts of label {label!r} to hold one out, got 1")
        train_idx, val_idx = split_per_class(texts.targets, VAL_FRACTION, rng)
        train, evaluation = texts.subset(train_idx), texts.subset(val_idx)
        split = f"seeded stratified split, {VAL_FRACTION:.0%} held out per class"
    train = train.subset(stratified_sample(train.targets, limit_train, rng))
    evaluation = evaluation.subset(stratified_sample(evaluation.targets, limit_val, rng))
    log.info("data %s: %d training / %d evaluation texts, %d classes (%s)",
             data, len(train), len(evaluation), len(labels), split)
    # Splits types its sets as images; a text run's are TextSets with the same labels/targets/subset.
    return Splits(train, evaluation, str(Path(data).resolve()), split)  # type: ignore[arg-type]


def text_spec(entry: TextBackboneEntry, max_tokens: int | None) -> TextSpec:
    """The encoder's tokenisation, cut at `max_tokens` (at most the encoder's own limit)."""
    if max_tokens is None:
        return entry.text
    if not 2 < max_tokens <= entry.text.max_tokens:
        raise DataError(f"expected --max-tokens in 3..{entry.text.max_tokens} for {entry.name}, got {max_tokens}")
    return TextSpec(**{**asdict(entry.text), "max_tokens": max_tokens})


class TokenBatches:
    """A text set tokenised once; DataLoaders of ((input_ids, attention_mask), targets), padded per batch."""

    def __init__(self, tokenizer: TextTokenizer, texts: TextSet):
        encoded = tokenizer.encode(texts.texts)
        self.ids = [e.ids for e in encoded]
        self.targets = texts.targets
        self.truncated = len(truncated_indices(encoded))
        self.pad_id = tokenizer.spec.pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.ids[index], int(self.targets[index])

    def _collate(self, items: list[tuple[np.ndarray, int]]) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        ids, mask = pad([ids for ids, _ in items], self.pad_id)
        return (torch.from_numpy(ids), torch.from_numpy(mask)), torch.tensor([t for _, t in items])

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
        # No worker processes: tokenisation already happened, a batch is only padding.
        return loader(self, batch_size, 0, shuffle=shuffle, seed=seed, collate_fn=self._collate)  # type: ignore[arg-type]


class TextInputs:
    """A text run's inputs: its data files, tokenised with the encoder's `tokenizer.json` at the run's max tokens."""

    def __init__(self, entry: TextBackboneEntry, max_tokens: int | None, device: torch.device):
        self.spec = text_spec(entry, max_tokens)
        self.tokenizer_json = entry.read(TOKENIZER_FILE)
        self.device = device
        with tempfile.TemporaryDirectory() as folder:  # `tokenizers` reads its file once, here
            path = Path(folder) / TOKENIZER_FILE
            path.write_bytes(self.tokenizer_json)
            self.tokenizer = TextTokenizer(path, self.spec)
        # Each text set is tokenised once, then counted, batched every epoch and evaluated from that.
        self._tokenised: dict[int, tuple[TextSet, TokenBatches]] = {}

    def _batches(self, texts: TextSet) -> TokenBatches:
        if id(texts) not in self._tokenised:  # the set is kept beside its tokens, so its id stays its own
            self._tokenised[id(texts)] = (texts, TokenBatches(self.tokenizer, texts))
        return self._tokenised[id(texts)][1]

    def load(self, data: str, val: str | None, *, seed: int, limit_train: int | None,
             limit_val: int | None) -> Splits:
        splits = load_text_splits(data, val, seed=seed, limit_train=limit_train, limit_val=limit_val)
        for name, texts in (("training", splits.train), ("evaluation", splits.val)):
            cut = self._batches(texts).truncated  # type: ignore[arg-type]
            if cut:
                log.warning("%d %s text(s) are longer than %d tokens and were cut to their first %d",
                            cut, name, self.spec.max_tokens, self.spec.max_tokens)
        return splits

    def train_batches(self, texts: TextSet, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
        return self._batches(texts).loader(batch_size, shuffle=True, seed=seed)

    @torch.inference_mode()
    def outputs(self, model: Backbone, texts: TextSet, output: str, *, batch_size: int, desc: str) -> torch.Tensor:
        """`model`'s `output` ("logits" or "embedding") per text, float32 [N, D] on CPU; `model` in eval mode."""
        model.eval()
        results = []
        for (ids, mask), _ in tqdm(self._batches(texts).loader(batch_size), desc=desc,
                                   unit="batch", leave=False):
            logits, embedding = model(ids.to(self.device), mask.to(self.device))
            results.append((logits if output == "logits" else embedding).float().cpu())
        return torch.cat(results)
