"""The PyTorch modules graft trains and exports: `Backbone` (a trunk giving the pooled embedding,
plus a linear head) and `SentenceEncoder` (BERT with sentence-transformers' mean pooling).

Kept apart from the registries (`graft.models.backbones`, `graft.models.text`), which import no
PyTorch until an entry builds one: naming, listing and refusing a backbone stay fast.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A pretrained trunk producing a pooled embedding, plus a linear head.

    `forward` returns `(logits, embedding)` from one pass, which is what export puts in the ONNX graph.
    """

    def __init__(self, name: str, trunk: nn.Module, head: nn.Linear, blocks: list[nn.Module]):
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.head = head
        self.blocks = blocks  # plain list: already registered under `trunk`

    @property
    def embedding_dim(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def embed(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The pooled embedding of an image batch, or of token ids and their attention mask."""
        return self.trunk(*inputs)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.trunk(*inputs)
        return self.head(embedding), embedding

    def reset_head(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised linear layer of `num_classes` outputs."""
        self.head = nn.Linear(self.embedding_dim, num_classes)

    def __setattr__(self, name, value):
        if name == "blocks":  # keep the list out of nn.Module's registration (modules live in trunk)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


class SentenceEncoder(nn.Module):
    """BERT -> mean of the token states under the attention mask -> L2 normalisation."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        # clamp: sentence-transformers' guard for an all-padding row
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)
