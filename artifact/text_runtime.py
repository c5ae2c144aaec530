"""Running a text artifact on ONNX Runtime: what `Runner` is for images, for token batches.

`TextRunner` verifies the graph and the tokenizer against the manifest, owns the tokenizer the
service and batch jobs encode with, and runs padded [N, L] token batches in chunks of `run_limit`
(as `Runner`: at most `CPU_RUN_LIMIT` at once on the CPU provider). TensorRT is left out: its engines need an optimisation profile per input, which the image
runner builds for one image input only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from graft.artifact.manifest import MODEL_FILE, Manifest, ManifestError, sha256_file, verify_model_hash
from graft.artifact.runtime import CPU_RUN_LIMIT, Runner, open_session, session_providers
from graft.artifact.text import TextTokenizer

log = logging.getLogger(__name__)

WARMUP_TOKENS = 16
"""Token length of the warm-up batches: ONNX Runtime's CPU kernels compile nothing per shape, so
one short length per batch size pre-packs the weights and sizes the arena."""


class TextRunner:
    """One text artifact's tokenizer and ONNX Runtime session (same arguments as `Runner`)."""

    postprocess = staticmethod(Runner.postprocess)

    def __init__(
        self, directory: Path, manifest: Manifest, *, name: str = "", buckets: tuple[int, ...],
        providers: tuple[str, ...], intra_op_threads: int, trt_cache_dir: Path, intra_op_spinning: bool | None = False,
        spin_between_runs: bool = False,
    ) -> None:
        verify_model_hash(directory, manifest)
        spec = manifest.text_spec
        tokenizer_file = directory / spec.tokenizer
        if not tokenizer_file.is_file() or sha256_file(tokenizer_file) != manifest.sha256.get("tokenizer"):
            raise ManifestError(f"expected {spec.tokenizer} in {directory} with the manifest's sha256, got "
                                f"{'a changed file' if tokenizer_file.is_file() else 'none'}")
        self.name = name or manifest.name
        self.manifest = manifest
        self.buckets = buckets
        self.tokenizer = TextTokenizer(tokenizer_file, spec)
        self.names = (manifest.io.input.name, manifest.io.mask.name if manifest.io.mask else "attention_mask")
        self.output_names = [output.name for output in manifest.io.outputs]
        started = time.perf_counter()
        # None ("auto": both timed at start) counts as off here: that start-up timing feeds image inputs.
        self.session = open_session(
            directory / MODEL_FILE, intra_op_threads=intra_op_threads, intra_op_spinning=bool(intra_op_spinning),
            spin_between_runs=spin_between_runs, providers=session_providers(
                tuple(p for p in providers if p != "TensorrtExecutionProvider"), trt_cache_dir=trt_cache_dir,
                input_name=self.names[0], input_shape=(spec.max_tokens,), max_batch=buckets[-1],
            ),
        )
        self.provider = self.session.get_providers()[0]
        self.run_limit = buckets[-1] if self.provider != "CPUExecutionProvider" else min(buckets[-1], CPU_RUN_LIMIT)
        log.info("model %s: text session on %s in %.2fs", self.name, self.provider, time.perf_counter() - started)

    def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Run int64 [N, L] token ids and mask, in chunks of `run_limit` (as `Runner`); each output's [N, ...]."""
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(f"expected token ids and mask of one shape [N, L], got {list(input_ids.shape)} "
                             f"and {list(attention_mask.shape)}")
        step = self.run_limit
        chunks = [
            self.session.run(self.output_names, {self.names[0]: input_ids[start:start + step],
                                                 self.names[1]: attention_mask[start:start + step]})
            for start in range(0, len(input_ids), step)
        ]
        return {name: np.concatenate([chunk[i] for chunk in chunks]).astype(np.float32, copy=False)
                for i, name in enumerate(self.output_names)}

    def warmup(self) -> None:
        """Run every bucket once at a short length, so no client request pays for a first run."""
        started = time.perf_counter()
        sizes = sorted({min(size, self.run_limit) for size in self.buckets})
        for size in sizes:
            tokens = np.ones((size, WARMUP_TOKENS), np.int64)
            self.infer(tokens, tokens)
        log.info("model %s: warmed batch sizes %s in %.2fs", self.name, sizes, time.perf_counter() - started)
