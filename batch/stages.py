"""The two stages a batch job maps over its rows; plain functions and a class, no Ray in sight.

`decode` runs as Ray tasks (CPU): bytes or a file -> `decode_image` -> `crop`, the same calls the
service makes per request, giving uint8 pixels (4x smaller than float32 in Ray's object store).
`Infer` runs as an actor pool: one ONNX Runtime session per actor (`graft.artifact.runtime.Runner`,
the providers of the service), `normalize` per batch as the service does, then the L2-normalised
embedding (embed) or softmax top-k, best first (classify).

Per-image failures never fail a batch: the row keeps its path and gets an `error` message instead.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from graft.artifact.image import decode_image
from graft.artifact.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, read_manifest
from graft.artifact.postprocess import batch_buckets, l2_normalize, served_identity, softmax, top_k
from graft.artifact.preprocessing import PreprocessingSpec, crop, normalize
from graft.artifact.runtime import Runner
from graft.artifact.text import pad
from graft.artifact.text_runtime import TextRunner

log = logging.getLogger(__name__)

PIXELS = "pixels"
ERROR = "error"
PATH = "path"
EMBED, CLASSIFY = "embed", "classify"


def decode(
    batch: dict[str, np.ndarray], *, spec: PreprocessingSpec, max_pixels: int | None,
    bytes_column: str | None, path_column: str | None,
) -> dict[str, Any]:
    """Decode and crop one batch of rows: `path` (str), `pixels` uint8 [N, H, W, 3], `error` (str, "" if none).

    Rows come either with encoded bytes (`bytes_column`) or with a file path only (`path_column`),
    in which case the file is read here, so an unreadable file is one row's error, not a failed job.
    Any other columns are passed through.
    """
    column = bytes_column or path_column
    if column is None:
        raise ValueError("expected bytes_column or path_column, got neither")
    count = len(batch[column])
    height, width = spec.input_size
    pixels = np.zeros((count, height, width, 3), np.uint8)
    # NOTE: "" stands for "none" between the stages: a column of only None reaches the next stage
    # as float NaNs once Ray Data has converted the batch to Arrow and back.
    errors = [""] * count
    paths = [p if isinstance(p, str) else "" for p in batch[path_column]] if path_column else [""] * count
    for i in range(count):
        try:
            if not bytes_column and not paths[i]:
                raise ValueError("expected an image path, got null")
            data = batch[bytes_column][i] if bytes_column else Path(paths[i]).read_bytes()
            if data is None:
                raise ValueError("expected image bytes, got null")
            image = decode_image(bytes(data), min_side=spec.resize_size, max_pixels=max_pixels)
            pixels[i] = crop(image, spec)
        except Exception as error:  # noqa: BLE001 - one bad file must not fail the job; it is reported per row
            errors[i] = f"{type(error).__name__}: {error}"
            log.debug("image %s: %s", paths[i], errors[i])
    passthrough = {k: v for k, v in batch.items() if k not in (bytes_column, path_column)}
    return {**passthrough, PATH: np.array(paths, dtype=object), PIXELS: pixels, ERROR: np.array(errors, dtype=object)}


def _fetch(files: dict[str, bytes] | list) -> dict[str, bytes]:
    """Files given directly, or as `[ray.put(files)]` (a reference the actor resolves itself)."""
    if isinstance(files, dict):
        return files
    import ray

    return ray.get(files[0])


def _materialise(files: dict[str, bytes], prefix: str) -> Path:
    """Write shipped artifact files into a fresh local folder: actors on other nodes need no shared disk."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


class Infer:
    """One ONNX Runtime session (built once per actor) applied to decoded batches.

    Args:
        model_files: `model.onnx` and `manifest.json` contents, or `[ray.put(those)]` (shipped to each
            actor, not read from a shared path).
        task: "embed" or "classify".
        batch_size: the largest batch run at once (GPU sessions are padded and warmed up to it).
        providers: ONNX Runtime providers to try, in order.
        intra_op_threads: ORT intra-op threads; 0: one per physical core.
        trt_cache_dir: TensorRT engine cache on each node.
        top_k: predictions kept per image (classify).
        normalize_embeddings: L2-normalise embeddings (embed), as `/embed` does by default.
        head_files: a head artifact's files, or `[ray.put(those)]` (classify with a head), or None.
        text_column: a text model's input column (embed): its rows are tokenised here and the
            output adds `truncated` (the text was cut to the model's token limit).
    """

    def __init__(
        self, model_files: dict[str, bytes] | list, *, task: str, batch_size: int, providers: tuple[str, ...],
        intra_op_threads: int, trt_cache_dir: str, top_k: int = 5, normalize_embeddings: bool = True,
        head_files: dict[str, bytes] | list | None = None, text_column: str | None = None,
    ) -> None:
        directory = _materialise(_fetch(model_files), "graft-batch-model-")
        try:
            self.manifest: Manifest = read_manifest(directory)
            runner = TextRunner if self.manifest.modality == "text" else Runner
            self.runner = runner(
                directory, self.manifest, buckets=batch_buckets(batch_size), providers=providers,
                intra_op_threads=intra_op_threads, trt_cache_dir=Path(trt_cache_dir),
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)  # the session holds the model from here on
        self.text_column = text_column or "text"
        if isinstance(self.runner, Runner) and self.runner.pad:
            # GPU sessions compile per shape; CPU sessions have nothing to warm.
            self.runner.warmup()
        self.task = task
        self.top_k = top_k
        self.normalize_embeddings = normalize_embeddings
        self.head = None
        self.labels = self.manifest.labels
        if head_files is not None:
            from graft.artifact.heads import read_head

            head_directory = _materialise(_fetch(head_files), "graft-batch-head-")
            try:
                self.head = read_head(head_directory)
            finally:
                shutil.rmtree(head_directory, ignore_errors=True)
            self.head.check_backbone(self.manifest)
            self.labels = self.head.labels
        self.model_name, self.model_version = served_identity(self.manifest, self.head)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        if isinstance(self.runner, TextRunner):
            return self._texts(self.runner, batch)
        errors = [str(e) or None for e in batch[ERROR]]
        ok = np.array([e is None for e in errors], dtype=bool)
        count = len(errors)
        columns: dict[str, pa.Array] = {
            name: pa.array(list(values)) for name, values in batch.items() if name not in (PIXELS, ERROR, PATH)
        }
        columns[PATH] = pa.array([str(p) or None for p in batch[PATH]], pa.string())
        columns["model"] = pa.array([self.model_name] * count, pa.string())
        columns["version"] = pa.array([self.model_version] * count, pa.string())
        outputs = {}
        if ok.any():
            pixels = np.ascontiguousarray(batch[PIXELS][ok])
            outputs = self.runner.infer(normalize(pixels, self.manifest.image_spec))
        if self.task == EMBED:
            columns["embedding"] = self._embeddings(outputs, ok)
        else:
            columns.update(self._top_k(outputs, ok))
        columns[ERROR] = pa.array(errors, pa.string())
        return pa.table(columns)

    def _texts(self, runner: TextRunner, batch: dict[str, np.ndarray]) -> pa.Table:
        """Embed the rows' texts: all columns kept, plus `embedding`, `truncated`, model, version, error."""
        texts = list(batch[self.text_column])
        errors = [None if isinstance(text, str) and text.strip() else
                  f"TextError: expected a non-empty text, got {'null' if text is None else repr(text)[:40]}"
                  for text in texts]
        ok = np.array([error is None for error in errors], dtype=bool)
        truncated: list[bool | None] = [None] * len(texts)
        outputs = {}
        if ok.any():
            encoded = runner.tokenizer.encode([text for text, good in zip(texts, ok) if good])
            outputs = runner.infer(*pad([e.ids for e in encoded], runner.tokenizer.spec.pad_id))
            for row, encoding in zip(np.flatnonzero(ok), encoded):
                truncated[row] = encoding.truncated
        columns: dict[str, pa.Array] = {name: pa.array(list(values)) for name, values in batch.items()}
        columns["model"] = pa.array([self.model_name] * len(texts), pa.string())
        columns["version"] = pa.array([self.model_version] * len(texts), pa.string())
        columns["embedding"] = self._embeddings(outputs, ok)
        columns["truncated"] = pa.array(truncated, pa.bool_())
        columns[ERROR] = pa.array(errors, pa.string())
        return pa.table(columns)

    def _embeddings(self, outputs: dict[str, np.ndarray], ok: np.ndarray) -> pa.Array:
        dim = self.manifest.embedding_dim
        vectors = np.zeros((len(ok), dim), np.float32)
        if outputs:
            found = outputs["embedding"]
            if self.normalize_embeddings:
                found = l2_normalize(found)
            vectors[ok] = found
        return pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1), pa.float32()), dim, mask=pa.array(~ok)
        )

    def _top_k(self, outputs: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, pa.Array]:
        k = min(self.top_k, len(self.labels))
        indices = np.zeros((len(ok), k), np.int64)
        scores = np.zeros((len(ok), k), np.float32)
        if outputs:
            logits = self.head.apply(outputs["embedding"]) if self.head is not None else outputs["logits"]
            indices[ok], scores[ok] = top_k(softmax(logits), k)
        rows = np.flatnonzero(ok)
        label_rows: list[list[str] | None] = [None] * len(ok)
        index_rows: list[list[int] | None] = [None] * len(ok)
        score_rows: list[list[float] | None] = [None] * len(ok)
        for row in rows:
            label_rows[row] = [self.labels[i] for i in indices[row]]
            index_rows[row] = indices[row].tolist()
            score_rows[row] = scores[row].tolist()
        return {
            "labels": pa.array(label_rows, pa.list_(pa.string())),
            "indices": pa.array(index_rows, pa.list_(pa.int32())),
            "scores": pa.array(score_rows, pa.list_(pa.float32())),
        }


def artifact_files(directory: Path) -> dict[str, bytes]:
    """The files an `Infer` actor needs from an artifact directory (a text model's tokenizer too)."""
    manifest = read_manifest(directory)
    names = (MODEL_FILE, MANIFEST_FILE, *([manifest.text.tokenizer] if manifest.text else []))
    return {name: (directory / name).read_bytes() for name in names}
