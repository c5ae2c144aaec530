"""One served artifact at run time: its ONNX Runtime session (`Runner`) behind its batcher.

Routes hand an engine preprocessed images and get one result per image; the engine's batch
function runs in the batcher's threads: stack, run the session, softmax, split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from graft.artifact.heads import Head
from graft.artifact.postprocess import softmax
from graft.artifact.runtime import Runner
from graft.artifact.text import pad
from graft.artifact.text_runtime import TextRunner
from graft.service.batcher import Batcher
from graft.service.config import ServeConfig
from graft.service.metrics import metrics
from graft.service.models import ServedModel


class Engine:
    """A served model's session and batcher.

    Building one verifies the model's hash and loads its session, so a broken artifact fails here,
    at start; `warmup` runs every batch bucket once before the service says it is ready.
    """

    def __init__(self, model: ServedModel, config: ServeConfig) -> None:
        self.model = model
        self.name = model.name
        self.manifest = model.manifest
        runner = TextRunner if model.manifest.modality == "text" else Runner
        self.runner = runner(
            model.directory, model.manifest, name=model.name, buckets=config.batch_buckets(),
            providers=config.providers, intra_op_threads=config.session_threads(),
            trt_cache_dir=config.trt_cache_dir, **config.session_spinning(),
        )
        self.text = self.runner if isinstance(self.runner, TextRunner) else None
        self.batcher = Batcher(
            model.name, self._run_batch, max_batch=config.max_batch_size, max_queue=config.max_queue,
            concurrency=config.concurrent_batches,
            observer=metrics().observer(model.name),
        )

    def _run_batch(self, inputs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if isinstance(self.runner, TextRunner):  # token ids of any lengths: padded to the batch's longest
            return self.runner.postprocess(self.runner.infer(*pad(inputs, self.runner.tokenizer.spec.pad_id)))
        return self.runner.postprocess(self.runner.infer(np.stack(inputs)))

    async def infer(self, inputs: list[np.ndarray], *, deadline: float) -> list[dict[str, np.ndarray]]:
        """Results (`embedding`; classifiers add `logits`, `probabilities`) for float32 [3, H, W]
        inputs (text models: int64 token ids), in order, batched with every other request on this model."""
        return await self.batcher.submit(inputs, deadline=deadline)

    def warmup(self) -> None:
        self.runner.warmup()

    def summary(self) -> dict:
        """What `GET /models` reports: the manifest's summary and the provider the session runs on."""
        return {**self.model.summary(), "provider": self.runner.provider}

    def close(self) -> None:
        self.batcher.close()


def deadline_after(milliseconds: float, *, start: float | None = None) -> float:
    """A `time.monotonic()` deadline `milliseconds` after `start` (a request's arrival; default: now)."""
    return (time.monotonic() if start is None else start) + milliseconds / 1000


@dataclass(frozen=True)
class Target:
    """What a request's `model` names: an engine, or a head on an engine's embedding."""

    engine: Engine
    head: Head | None = None

    @property
    def name(self) -> str:
        return self.head.name if self.head is not None else self.engine.name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels if self.head is not None else tuple(self.engine.manifest.labels)

    @property
    def task(self) -> str:
        return "classifier" if self.head is not None else self.engine.manifest.task

    @property
    def version(self) -> str:
        return self.head.spec.version if self.head is not None else self.engine.manifest.version

    def outputs(self, results: list[dict[str, np.ndarray]], names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """The engine's per-image results stacked into [N, ...] arrays (only `names`, when given); a
        head adds its `logits` and `probabilities` from the embeddings (numpy, float32)."""
        if self.head is None:
            return {key: np.stack([result[key] for result in results]) for key in names or results[0]}
        embedding = np.stack([result["embedding"] for result in results])
        logits = self.head.apply(embedding)
        return {"logits": logits, "probabilities": softmax(logits), "embedding": embedding}
