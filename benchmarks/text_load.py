"""Text `/embed` under load against its pipeline ceiling, measured side by side in one run.

Ceiling: what one process does with no HTTP: tokenise a batch of `--clients` sentences with the
artifact's tokenizer, pad it, run it on ONNX Runtime (`TextRunner`, the session settings the service
uses, as many batches at once as its batcher), repeat. Service: `--clients` concurrent clients, each
sending one sentence per `/embed` request as JSON, as fast as answers come. The sentences are real (~20 words: the first 20 words of
BBC News articles' first paragraphs). The phases alternate (ceiling, service, ceiling) so that the
ratio compares like with like on a shared machine.

Run: `graft serve --model DIR` (port 3000), then
`python -m graft.benchmarks.text_load --artifact DIR --url http://127.0.0.1:3000`.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from graft.artifact.manifest import read_manifest
from graft.artifact.text import pad
from graft.artifact.text_runtime import TextRunner
from graft.benchmarks.load import JsonWorkload, run_load
from graft.benchmarks.text_heads import bbc_news, report
from graft.service.config import ServeConfig

WORDS = 20


def sentences() -> list[str]:
    """Real ~20-word sentences: the first `WORDS` words of each BBC News article's first paragraph."""
    texts, _ = bbc_news()
    return [" ".join(text.split(". ", 1)[-1].split()[:WORDS]) for text in texts]


def ceiling(artifact: Path, texts: Sequence[str], *, batch: int, seconds: float) -> float:
    """Texts per second through tokenise + pad + ONNX Runtime in this process, batches of `batch`, as
    many at once as the service's batcher runs (`GRAFT_CONCURRENT_BATCHES`)."""
    config = ServeConfig(models=(str(artifact),))
    runner = TextRunner(artifact, read_manifest(artifact), buckets=config.batch_buckets(), providers=config.providers,
                        intra_op_threads=config.session_threads(), trt_cache_dir=config.trt_cache_dir)
    runner.warmup()
    chunks = itertools.cycle([texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)])
    taking = threading.Lock()  # the loops share one cycle of chunks
    started = time.perf_counter()

    def loop() -> int:
        done = 0
        while time.perf_counter() - started < seconds:
            with taking:
                chunk = next(chunks)
            runner.infer(*pad([e.ids for e in runner.tokenizer.encode(chunk)], runner.tokenizer.spec.pad_id))
            done += len(chunk)
        return done

    with ThreadPoolExecutor(config.concurrent_batches) as loops:
        done = sum(loops.map(lambda _: loop(), range(config.concurrent_batches)))
    return done / (time.perf_counter() - started)


def service(url: str, model: str, texts: Sequence[str], *, clients: int, seconds: float) -> dict:
    """`clients` closed-loop clients, one text per `/embed` request: the load driver's figures."""
    workload = JsonWorkload(f"{url}/embed", [{"model": model, "texts": [text]} for text in texts])
    driver_cpu = time.process_time()
    result = run_load(workload, concurrency=clients, max_requests=10**7, max_seconds=seconds, label="text /embed")
    return {**result.figures(), "driver_cpu_s": time.process_time() - driver_cpu}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="the text artifact the server serves")
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    args = parser.parse_args(argv)
    texts = sentences()
    model = read_manifest(args.artifact).name
    first = ceiling(args.artifact, texts, batch=args.clients, seconds=args.seconds)
    served = service(args.url.rstrip("/"), model, texts, clients=args.clients, seconds=args.seconds)
    second = ceiling(args.artifact, texts, batch=args.clients, seconds=args.seconds)
    result = {
        "clients": args.clients, "seconds_per_phase": args.seconds, "words_per_text": WORDS,
        "ceiling_texts_per_s": [round(first, 1), round(second, 1)],
        "service_texts_per_s": round(served["images_per_s"], 1), "service": served,
        "ratio": round(served["images_per_s"] / ((first + second) / 2), 3),
    }
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
