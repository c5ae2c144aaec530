"""The one text preprocessing: strings -> token ids with the artifact's own `tokenizer.json`.

Text artifacts carry their tokenizer; the export parity gate, the service and batch jobs all
tokenise here, with the manifest's `TextSpec`, so the model is fed what the gate measured.
Truncation is never silent: every encoding says whether its text was cut to `max_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import Field
from pydantic.dataclasses import dataclass

from graft.artifact.errors import GraftError

TOKENIZER_FILE = "tokenizer.json"


class TextError(GraftError, ValueError):
    """A text the model cannot take: empty, not UTF-8, or over a limit."""

    def __init__(self, *, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")
        self.expected = expected
        self.got = got


@dataclass(frozen=True)
class TextSpec:
    """How a string becomes the model's input (the text counterpart of `PreprocessingSpec`).

    Attributes:
        max_tokens: most tokens the model takes per text, [CLS] and [SEP] included.
        truncation: longer texts keep their first tokens (as sentence-transformers does).
        padding: a batch is padded to its longest text; `attention_mask` marks the real tokens.
        pad_id: the id padded positions hold.
        tokenizer: the Hugging Face `tokenizers` file in the artifact directory.
        pooling: how token states become one vector (inside the graph).
        normalized: the graph L2-normalises its `embedding` output.
    """

    max_tokens: int = Field(gt=2)
    truncation: Literal["end"] = "end"
    padding: Literal["longest"] = "longest"
    pad_id: int = Field(default=0, ge=0)
    tokenizer: str = TOKENIZER_FILE
    pooling: Literal["mean"] = "mean"
    normalized: bool = True


@plain_dataclass(frozen=True)
class Encoded:
    """One text's token ids (int64, at most `max_tokens`) and whether its end was cut off."""

    ids: np.ndarray
    truncated: bool


class TextTokenizer:
    """A text artifact's tokenizer, set to the manifest's truncation and with padding left to `pad`."""

    def __init__(self, path: str | Path, spec: TextSpec) -> None:
        from tokenizers import Tokenizer

        self.spec = spec
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=spec.max_tokens, direction="right")

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """Token ids per text, in order; `truncated` when the text had more than `max_tokens`.

        Raises:
            TextError: an empty (or whitespace-only) text, named by its index.
        """
        for index, text in enumerate(texts):
            if not text.strip():
                raise TextError(expected="non-empty texts", got=f"an empty text at index {index}")
        return [
            Encoded(np.asarray(encoding.ids, dtype=np.int64), bool(encoding.overflowing))
            for encoding in self._tokenizer.encode_batch(list(texts))
        ]


def truncated_indices(encoded: Sequence[Encoded]) -> list[int]:
    """The positions of the encodings whose text was cut to `max_tokens`."""
    return [index for index, encoding in enumerate(encoded) if encoding.truncated]


def pad(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [N, longest], for token id sequences of any lengths."""
    longest = max(len(ids) for ids in sequences)
    input_ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask

