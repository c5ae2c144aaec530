"""`graft bench heads`: heads fitted through a running service, on Fashion-MNIST.

For each k in `Plan.shots`: k images per class of the training split (seeded; each smaller k's
images are a prefix of the larger k's), fitted by `POST /heads` (timed end to end, as a client sees
it), then top-1 accuracy on the test split by `POST /classify` with `model=<head>`.

Then the cost of many heads on one backbone: the same test images classified through one head,
and through `Plan.cost_heads` heads with one request per head for each chunk of images, all sent
at once. The service shares batches among heads but runs the backbone once per image *per
request*, so this measures what a client pays today for asking several heads about an image.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import httpx
import numpy as np
from PIL import Image

from graft.artifact.errors import GraftError
from graft.benchmarks.report import _table, targets_table
from graft.models.data import ArrayImages, fashion_mnist

log = logging.getLogger(__name__)

PREFIX = "bench-fmnist"
FIT_SECONDS_TARGET, ACCURACY_TARGET, COST_RATIO_TARGET = 20.0, 0.80, 1.2


class BenchError(GraftError):
    """The service answered a benchmark request with an error."""


@dataclass(frozen=True)
class Plan:
    """What the run measures.

    Attributes:
        shots: images per class of each fitted head.
        seed: seeds the choice of training images.
        test_images: test-split images classified per head (the first N; None: all 10,000).
        per_request: images per `/classify` request.
        concurrency: `/classify` requests in flight.
        cost_images: test images classified in the one-head vs many-heads comparison.
        cost_heads: heads in that comparison.
    """

    shots: tuple[int, ...] = (5, 10, 20, 50)
    seed: int = 0
    test_images: int | None = None
    per_request: int = 32
    concurrency: int = 4
    cost_images: int = 512
    cost_heads: int = 10


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def shot_order(data: ArrayImages, seed: int) -> list[np.ndarray]:
    """Per class, its images in a seeded order: the k-shot set is the first k of each."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(data.targets == cls)) for cls in range(len(data.labels))]


def _check(response: httpx.Response, what: str) -> dict:
    if response.status_code >= 300:
        raise BenchError(f"{what}: expected success, got HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


class HeadsBench:
    """One benchmark run against the service at `url`."""

    def __init__(self, url: str, token: str, plan: Plan, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.plan = plan
        self.admin = {"Authorization": f"Bearer {token}"}
        self.inference = {"X-API-Key": api_key} if api_key else {}

    def fit(self, client: httpx.Client, name: str, images: Sequence[bytes], labels: Sequence[str]) -> dict:
        """POST /heads; the response plus the wall time the client saw."""
        files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        started = time.perf_counter()
        response = client.post(self.url + "/heads", files=files, headers=self.admin,
                               data={"name": name, "labels": list(labels), "overwrite": "true"})
        wall = time.perf_counter() - started
        return {**_check(response, f"POST /heads {name}"), "wall_seconds": wall}

    async def _classify(self, client: httpx.AsyncClient, jobs: list[tuple[str, Sequence[bytes]]]) -> list[list[str]]:
        """Top-1 labels for each (model, images) job, `plan.concurrency` requests in flight."""
        gate = asyncio.Semaphore(self.plan.concurrency)

        async def one(model: str, images: Sequence[bytes]) -> list[str]:
            files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
            async with gate:
                response = await client.post(self.url + "/classify", files=files, headers=self.inference,
                                             data={"model": model, "top_k": "1"})
            body = _check(response, f"POST /classify model={model}")
            # Several comma-separated heads answer {"models": {head: result}}: one backbone pass per image.
            results = body["models"].values() if "models" in body else [body]
            return [top[0]["label"] for result in results for top in result["predictions"]]

        return await asyncio.gather(*(one(model, images) for model, images in jobs))

    def classify(self, jobs: list[tuple[str, Sequence[bytes]]]) -> tuple[list[list[str]], float]:
        """`_classify` on a fresh client, and its wall time."""

        async def run() -> tuple[list[list[str]], float]:
            async with httpx.AsyncClient(timeout=300) as client:
                started = time.perf_counter()
                results = await self._classify(client, jobs)
                return results, time.perf_counter() - started

        return asyncio.run(run())

    def chunks(self, images: Sequence[bytes]) -> list[Sequence[bytes]]:
        size = self.plan.per_request
        return [images[i : i + size] for i in range(0, len(images), size)]

    def run(self) -> dict:
        plan = self.plan
        train, test = fashion_mnist("train"), fashion_mnist("t10k")
        order = shot_order(train, plan.seed)
        count = len(test) if plan.test_images is None else min(plan.test_images, len(test))
        test_pngs = [png(test.pixels[i]) for i in range(count)]
        test_labels = [test.labels[t] for t in test.targets[:count]]
        created: list[str] = []
        shots = []
        with httpx.Client(timeout=600) as client:
            try:
                for k in plan.shots:
                    indices = np.concatenate([members[:k] for members in order])
                    name = f"{PREFIX}-k{k}"
                    fitted = self.fit(client, name, [png(train.pixels[i]) for i in indices],
                                      [train.labels[train.targets[i]] for i in indices])
                    created.append(name)
                    results, seconds = self.classify([(name, chunk) for chunk in self.chunks(test_pngs)])
                    predicted = [label for chunk in results for label in chunk]
                    accuracy = float(np.mean([p == t for p, t in zip(predicted, test_labels)]))
                    shots.append({
                        "k": k, "images": len(indices), "fit_wall_seconds": round(fitted["wall_seconds"], 2),
                        "fit_seconds_server": fitted["fit_seconds"], "cv_estimate": fitted["accuracy_estimate"],
                        "cv_method": fitted["accuracy_method"], "test_accuracy": accuracy, "test_images": count,
                        "classify_seconds": round(seconds, 2),
                    })
                    log.info("k=%d: fit %.1f s, CV %.3f, test accuracy %.4f on %d images (%.1f s)", k,
                             fitted["wall_seconds"], fitted["accuracy_estimate"], accuracy, count, seconds)
                cost = self.cost(client, train, order, test_pngs[: plan.cost_images], created)
            finally:
                for name in created:  # leave the server's heads as they were
                    client.delete(f"{self.url}/heads/{name}", headers=self.admin)
        return {"kind": "heads", "url": self.url, "plan": asdict(plan), "shots": shots, "cost": cost,
                "targets": targets(shots, cost)}

    def cost(self, client: httpx.Client, train: ArrayImages, order: list[np.ndarray], images: list[bytes],
             created: list[str]) -> dict:
        """Classifying `images` through one head vs through `plan.cost_heads` heads at once."""
        names = []
        for h in range(self.plan.cost_heads):
            # Different 5-shot sets, so the heads are really different heads.
            indices = np.concatenate([members[5 * h : 5 * (h + 1)] for members in order])
            name = f"{PREFIX}-cost{h}"
            self.fit(client, name, [png(train.pixels[i]) for i in indices],
                     [train.labels[train.targets[i]] for i in indices])
            created.append(name)
            names.append(name)
        chunks = self.chunks(images)
        self.classify([(names[0], chunks[0])])  # warm connections and this head's first use
        _, one = self.classify([(names[0], chunk) for chunk in chunks])
        _, many = self.classify([(",".join(names), chunk) for chunk in chunks])
        _, separate = self.classify([(name, chunk) for chunk in chunks for name in names])
        return {
            "images": len(images), "heads": len(names), "one_head_seconds": round(one, 2),
            "many_heads_seconds": round(many, 2), "ratio": round(many / one, 2),
            "separate_requests_seconds": round(separate, 2), "separate_ratio": round(separate / one, 2),
            "how": f"{len(chunks)} requests of {self.plan.per_request} images naming one head, vs the same requests "
                   f"naming all {len(names)} heads (`model=h1,h2,...`: one backbone pass per image), "
                   f"{self.plan.concurrency} in flight",
        }


def targets(shots: list[dict], cost: dict) -> list[dict]:
    """Issue 10's targets against what was measured (None where the run did not measure it)."""
    k50 = next((row for row in shots if row["k"] == 50), None)
    return [
        {"name": "k=50 fit, POST /heads end to end", "value": k50 and k50["fit_wall_seconds"],
         "threshold": f"<= {FIT_SECONDS_TARGET} s",
         "met": None if k50 is None else k50["fit_wall_seconds"] <= FIT_SECONDS_TARGET,
         "detail": "500 PNGs, wall time seen by the client"},
        {"name": "k=50 test accuracy", "value": k50 and k50["test_accuracy"], "threshold": f">= {ACCURACY_TARGET}",
         "met": None if k50 is None else k50["test_accuracy"] >= ACCURACY_TARGET,
         "detail": f"top-1 on {k50['test_images'] if k50 else 0} test images"},
        {"name": f"{cost['heads']} heads vs 1 head", "value": cost["ratio"], "threshold": f"<= {COST_RATIO_TARGET}x",
         "met": cost["ratio"] <= COST_RATIO_TARGET, "detail": cost["how"]},
    ]


def markdown(result: dict) -> str:
    shots = _table(["k", "images", "fit s (POST /heads)", "CV estimate", "test accuracy"],
                   [[r["k"], r["images"], r["fit_wall_seconds"], r["cv_estimate"], f"{r['test_accuracy']:.4f}"]
                    for r in result["shots"]])
    cost, tested = result["cost"], result["shots"][0]["test_images"] if result["shots"] else 0
    rows = [[f"{cost['images']} test images, 1 head", cost["one_head_seconds"], 1.0],
            [f"the same images, {cost['heads']} heads in one request", cost["many_heads_seconds"], cost["ratio"]],
            [f"the same images, one request per head ({cost['heads']}x the requests)",
             cost["separate_requests_seconds"], cost["separate_ratio"]]]
    return "\n\n".join([
        "# graft bench heads", f"`{result['command']}` against {result['url']}",
        f"## Heads fitted through POST /heads (Fashion-MNIST; test accuracy on {tested} test images)",
        shots, "## One head vs many on one backbone", _table(["classify", "seconds", "x one head"], rows),
        cost["how"], "## Targets", targets_table(result["targets"]),
    ]) + "\n"
