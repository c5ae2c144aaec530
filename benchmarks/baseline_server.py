"""The naive baseline: a model served the way tutorials do it.

A plain FastAPI app on uvicorn (one worker) running the model in PyTorch eager. Each image is opened
with `Image.open(...).convert("RGB")` (full-size decode, no draft mode) and run as its own batch of 1
inside an `async def` endpoint, so requests are served strictly one at a time: no batching, no worker
threads. It serves the same model (the artifact's backbone and weights) with the same preprocessing
contract (`artifact.preprocess` driven by the artifact's manifest) and answers in the same JSON shapes
as graft's `/classify` and `/embed`, so one load driver measures both.

Run: `python -m benchmarks.baseline_server --model DIR --port 8001` (binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import torch
from fastapi import FastAPI, File, Form, UploadFile
from PIL import Image

from graft.artifact.manifest import Manifest, read_manifest
from graft.artifact.preprocessing import preprocess
from graft.models.backbones import get_backbone
from graft.models.modules import Backbone

logger = logging.getLogger(__name__)


def load_model(artifact: Path) -> tuple[Backbone, Manifest]:
    """The artifact's backbone in PyTorch eager, with the weights file it was exported from if it is
    on this machine, else the backbone's pretrained (or random) weights; head sized to its labels."""
    manifest = read_manifest(artifact)
    source = Path(manifest.weights.source)
    weights: Path | str
    if source.is_file():
        weights = source
    else:
        weights = "pretrained" if manifest.weights.pretrained else "none"
    model, described = get_backbone(manifest.backbone).create(weights=weights)
    if manifest.labels and model.num_classes != len(manifest.labels):
        model.reset_head(len(manifest.labels))
    logger.info("baseline: %s in PyTorch eager, weights %s", manifest.backbone, described)
    return model.eval(), manifest


def create_app(artifact: Path) -> FastAPI:
    model, manifest = load_model(artifact)
    spec = manifest.image_spec
    app = FastAPI(title="naive baseline")

    def forward(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        batch = torch.from_numpy(preprocess(image, spec)).unsqueeze(0)
        with torch.no_grad():
            logits, embedding = model(batch)
        return logits[0], embedding[0]

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.post("/classify")
    async def classify(images: list[UploadFile] = File(...), top_k: int = Form(5)) -> dict:
        predictions = []
        for upload in images:
            logits, _ = forward(await upload.read())
            scores, indices = torch.softmax(logits, dim=0).topk(min(top_k, len(manifest.labels)))
            predictions.append([
                {"label": manifest.labels[i], "index": i, "score": s}
                for s, i in zip(scores.tolist(), indices.tolist())
            ])
        return {"model": manifest.name, "predictions": predictions}

    @app.post("/embed")
    async def embed(images: list[UploadFile] = File(...), normalize: bool = Form(True)) -> dict:
        vectors = []
        for upload in images:
            _, embedding = forward(await upload.read())
            if normalize:
                embedding = torch.nn.functional.normalize(embedding, dim=0)
            vectors.append(embedding.tolist())
        return {"model": manifest.name, "dim": manifest.embedding_dim, "embeddings": vectors}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact directory")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, help="PyTorch intra-op threads (default: PyTorch's, one per core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    logger.info("baseline: %d PyTorch threads", torch.get_num_threads())
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, workers=1, access_log=False)


if __name__ == "__main__":
    main()
