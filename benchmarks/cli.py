"""`graft bench model` and `graft bench service`. Only argparse and the stdlib at module level: the
benchmark code (torch, onnxruntime, httpx, matplotlib) is imported inside the handlers."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from graft.argtypes import non_negative_int, positive

logger = logging.getLogger(__name__)

DEFAULT_MODEL = Path("artifacts/tf_efficientnet_lite0")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="latency/throughput benchmarks: model engines, the service vs a baseline")
    what = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")

    model = what.add_parser(
        "model", help="PyTorch eager vs ONNX Runtime on the same artifact, batch sizes 1..64",
        description="Export each backbone with random weights once, then time every engine this machine "
        "has (PyTorch eager, ONNX Runtime CPU; CUDA/TensorRT FP32/FP16 with a GPU) at each batch size.",
    )
    model.add_argument("--backbones", nargs="+", help="registry names (default: tf_efficientnet_lite0 resnet50)")
    model.add_argument("--batch-sizes", type=_int_list, help="default 1,2,4,8,16,32,64")
    model.add_argument("--artifacts", type=Path, default=Path("artifacts/bench"),
                       help="where the random-weights artifacts are exported and reused (default: %(default)s)")
    model.add_argument("--quick", action="store_true", help="Lite0 only, batch sizes 1,8, a few runs each")
    model.add_argument("--out", type=Path, help="results folder (default: results/<UTC timestamp>)")
    model.add_argument("--compare", type=Path, nargs="+", metavar="DIR",
                       help="instead: these artifacts (e.g. one model's FP32 and INT8) side by side on ONNX Runtime CPU, "
                            "batch sizes 1,16,32 unless --batch-sizes, ratios to the first")
    model.add_argument("--threads", type=positive(int), default=2, help="--compare: intra-op threads (default 2)")
    model.add_argument("--rounds", type=positive(int), default=5, help="--compare: interleaved rounds (default 5)")
    model.set_defaults(handler=run_model)

    service = what.add_parser(
        "service", help="graft's service vs a naive FastAPI baseline under closed-loop load",
        description="Measure the ceiling (raw ONNX Runtime), then graft's service and the baseline server "
        "with real JPEGs (224, 640, 2000 px) at 1, 4, 16, 64 concurrent clients; prints each serving-core "
        "target as met or MISSED.",
    )
    service.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                         help="artifact directory served, used for the ceiling and by the baseline (default: %(default)s)")
    service.add_argument("--url", help="benchmark an already running graft service (loopback only) serving --model")
    service.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline server")
    service.add_argument("--baseline-threads", type=positive(int), metavar="N",
                         help="PyTorch threads in the baseline (default: PyTorch's; 1 avoids OpenMP stalls on a busy machine)")
    service.add_argument("--concurrency", type=_int_list, help="clients per cell (default 1,4,16,64; quick 1,16)")
    service.add_argument("--max-requests", type=positive(int), help="per cell (default 600; quick 16)")
    service.add_argument("--max-seconds", type=positive(float), help="seconds per cell, plus as long again for requests in flight (default 8; quick 2)")
    service.add_argument("--images-per-request", type=positive(int), help="image parts per request (default 1)")
    service.add_argument("--compare", type=Path, nargs="+", metavar="DIR",
                         help="also these artifacts (e.g. --model's INT8), one after the other in the same run: ceilings "
                              "and graft's cells (no baseline, overload or storm), side by side with --model's")
    service.add_argument("--quick", action="store_true", help="CI smoke test: few cells, few requests (< 2 min)")
    service.add_argument("--profile", action="store_true",
                         help="py-spy the servers during the /classify cells at 16 clients (perturbs those figures)")
    service.add_argument("--out", type=Path, help="results folder (default: results/<UTC timestamp>)")
    service.set_defaults(handler=run_service)
    register_batch(what)
    register_heads(what)
    register_memory(what)
    register_preprocess(what)


def _finish(result: dict, out: Path, plots: list[Path]) -> None:
    from graft.benchmarks.report import markdown, write_json

    command = shlex.join(["graft", *sys.argv[1:]])
    result["command"] = command
    result["environment"]["load_average_end"] = os.getloadavg()  # a busy machine shows here
    write_json(out / "results.json", result)
    text = markdown(result, command)
    (out / "results.md").write_text(text)
    logger.info("results: %s (results.json, results.md, %s)", out, ", ".join(p.name for p in plots))
    print(text)


def _write(result: dict, out: Path, markdown: Callable[[dict], str]) -> None:
    """results.json and results.md (from `markdown`) in `out`; the Markdown printed too."""
    from graft.benchmarks.report import write_json

    write_json(out / "results.json", result)
    text = markdown(result)
    (out / "results.md").write_text(text)
    logger.info("results: %s (results.json, results.md)", out)
    print(text)


def run_model(args: argparse.Namespace) -> int:
    from graft.benchmarks import model_bench
    from graft.benchmarks.report import environment, plot_model, results_dir

    out = results_dir(args.out)
    env = environment()
    if args.compare:
        return _compare_models(args, out, env)
    backbones = args.backbones or (("tf_efficientnet_lite0",) if args.quick else model_bench.DEFAULT_BACKBONES)
    batch_sizes = args.batch_sizes or ((1, 8) if args.quick else model_bench.DEFAULT_BATCH_SIZES)
    timing = model_bench.QUICK_TIMING if args.quick else model_bench.Timing()
    rows = model_bench.bench_models(backbones, batch_sizes, args.artifacts, timing)
    result = {
        "kind": "model",
        "environment": env,
        "settings": {"backbones": list(backbones), "batch_sizes": list(batch_sizes), "timing": vars(timing),
                     "artifacts": str(args.artifacts), "weights": "random (seed 0)"},
        "rows": rows,
    }
    _finish(result, out, [plot_model(rows, out / "model.png")])
    return 0


def _compare_models(args: argparse.Namespace, out: Path, env: dict) -> int:
    from graft.benchmarks import precision_bench
    from graft.benchmarks.images import make_jpegs

    images = make_jpegs(out / "jpegs", ("640",))["640"]
    batch_sizes = args.batch_sizes or precision_bench.DEFAULT_BATCH_SIZES
    rows = precision_bench.compare(args.compare, images, batch_sizes, threads=args.threads, rounds=args.rounds)
    result = {"kind": "model-compare", "environment": env, "cpu": precision_bench.cpu_flags(), "rows": rows,
              "command": shlex.join(["graft", *sys.argv[1:]])}
    _write(result, out, precision_bench.markdown)
    return 0


def run_service(args: argparse.Namespace) -> int:
    import dataclasses

    from graft.artifact.manifest import ManifestError
    from graft.benchmarks import service_bench
    from graft.benchmarks.report import environment, plot_service, results_dir

    if not (args.model / "manifest.json").is_file():
        raise ManifestError(
            f"expected an artifact directory at {args.model}; build the default one with `make default-model` "
            f"or pass --model DIR"
        )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    plan = service_bench.Plan.quick() if args.quick else service_bench.Plan()
    overrides = {"concurrency": args.concurrency, "max_requests": args.max_requests,
                 "max_seconds": args.max_seconds, "images_per_request": args.images_per_request}
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    out = results_dir(args.out)
    env = environment()
    result = service_bench.bench_service(args.model, out, plan=plan, url=args.url, baseline=args.baseline,
                                           baseline_threads=args.baseline_threads,
                                           profile_servers=args.profile)
    result = {"environment": env, **result}
    if args.compare:
        compared = {args.model.name: result}
        for extra in args.compare:
            compared[extra.name] = service_bench.bench_service(
                extra, out / extra.name, plan=dataclasses.replace(plan, overload_concurrency=None, storm_concurrency=None),
                baseline=False)
        result["compared"] = {name: figures for name, figures in compared.items() if name != args.model.name}
        result["side_by_side"] = service_bench.side_by_side(compared)
    _finish(result, out, plot_service(result["cells"], result["ceiling"], out, result.get("pipeline")))
    missed = [t["name"] for t in result["targets"] if t["met"] is False]
    if missed:
        logger.warning("targets missed: %s", "; ".join(missed))
    return 0


def register_batch(what: argparse._SubParsersAction) -> None:
    """`graft bench batch`: `graft batch embed` on Ray Data vs the in-process pipeline ceiling, one run."""
    batch = what.add_parser(
        "batch", help="graft batch embed (Ray Data) vs the in-process pipeline ceiling on the same JPEGs",
        description="Write a collection of real JPEGs (scikit-image photos at the given sizes, repeated), "
        "measure the in-process pipeline ceiling on the same bytes, then run `graft batch embed` on a local Ray.",
    )
    batch.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="artifact directory (default: %(default)s)")
    batch.add_argument("--images", type=positive(int), default=2000, help="files in the collection (default: %(default)s)")
    batch.add_argument("--sizes", default="224,640", help="JPEG sizes mixed in the collection (default: %(default)s)")
    batch.add_argument("--seconds", type=positive(float), default=5.0, help="ceiling: seconds per batch size (default: %(default)s)")
    batch.add_argument("--batch-size", type=positive(int), default=32, help="graft batch: images per ORT call (default: %(default)s)")
    batch.add_argument("--service-clients", type=non_negative_int, default=16,
                       help="also drive `graft serve` /embed on the same JPEGs with this many clients; 0 skips (default: %(default)s)")
    batch.add_argument("--repeat", type=positive(int), default=1, help="ceiling + job rounds (default: %(default)s)")
    batch.add_argument("--work", type=Path, default=Path("artifacts/bench-batch"),
                       help="where the collection is written and reused (default: %(default)s)")
    batch.add_argument("--out", type=Path, help="results folder (default: results/<UTC timestamp>)")
    batch.set_defaults(handler=run_batch)


def run_batch(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import shutil
    import statistics
    import time

    from graft.batch.job import JobConfig, run_job
    from graft.benchmarks.images import make_jpegs
    from graft.benchmarks.pipeline import pipeline_ceiling
    from graft.benchmarks.report import environment, results_dir

    sizes = tuple(s.strip() for s in args.sizes.split(",") if s.strip())
    made = make_jpegs(args.work / "jpegs", sizes)
    unique = [p for size in sizes for p in made[size]]
    collection = args.work / f"collection-{args.images}-{'-'.join(sizes)}"
    if not collection.is_dir():
        collection.mkdir(parents=True)
        for i in range(args.images):  # the same real photos over and over: decode cost is what matters
            shutil.copyfile(unique[i % len(unique)], collection / f"{i:06d}-{unique[i % len(unique)].name}")
    out, env = results_dir(args.out), environment()
    blobs = [p.read_bytes() for p in unique]
    rounds: list[dict[str, Any]] = []
    for round_ in range(args.repeat):  # ceiling and job back to back, so both see the same machine load
        load_start = os.getloadavg()
        ceiling = pipeline_ceiling(args.model, blobs, seconds=args.seconds)
        logger.info("ceiling: %.1f images/s at batch %d", ceiling.images_per_second, ceiling.batch_size)
        started = time.perf_counter()
        summary = run_job(JobConfig(task="embed", model=str(args.model), input=str(collection),
                                    output=out / "embeddings", batch_size=args.batch_size, overwrite=True,
                                    progress=False))
        command_seconds = time.perf_counter() - started
        rounds.append({
            "ceiling": ceiling.to_dict(), "batch": dataclasses.asdict(summary),
            "batch_command_seconds": round(command_seconds, 2),
            "ratio_to_ceiling": round(summary.images_per_second / ceiling.images_per_second, 3),
            "ratio_with_ray_start": round(summary.images / command_seconds / ceiling.images_per_second, 3),
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
        })
        print(
            f"round {round_ + 1}: ceiling {ceiling.images_per_second:.1f} images/s (batch {ceiling.batch_size}); "
            f"graft batch embed {summary.images_per_second:.1f} images/s ({rounds[-1]['ratio_to_ceiling']:.2f}x), "
            f"{summary.images / command_seconds:.1f} images/s with Ray start ({rounds[-1]['ratio_with_ray_start']:.2f}x); "
            f"load {load_start[0]:.1f} -> {rounds[-1]['load_average_end'][0]:.1f}"
        )
    median = statistics.median(r["ratio_to_ceiling"] for r in rounds)
    service = None
    if args.service_clients:
        from graft.benchmarks.load import Workload, run_load
        from graft.benchmarks.service_bench import Server, free_port, graft_argv

        port = free_port()  # the service on the same files: /embed, closed-loop clients, one image each
        with Server("graft", graft_argv(args.model, port), port, out / "graft-server.log") as server:
            load = run_load(Workload(f"{server.url}/embed", unique), concurrency=args.service_clients,
                            max_requests=1000, max_seconds=10, label="embed")
        service = load.figures()
        print(f"graft service /embed, {args.service_clients} clients: {service['images_per_s']:.1f} images/s, "
              f"p50 {service['latency_ms'].get('p50', float('nan')):.0f} ms, errors {service['errors']}")
    result = {
        "kind": "batch", "command": shlex.join(["graft", *sys.argv[1:]]), "environment": env,
        "images": args.images, "sizes": list(sizes), "rounds": rounds, "service": service,
        "median_ratio_to_ceiling": round(median, 3), "target_0_7_met": median >= 0.7,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"median ratio {result['median_ratio_to_ceiling']:.2f}x (target 0.7x); results: {out}")
    return 0


SECRET_OPTIONS = ("--token", "--api-key")


def register_heads(what: argparse._SubParsersAction) -> None:
    """`graft bench heads`: heads fitted through a running service's POST /heads, on Fashion-MNIST."""
    heads = what.add_parser(
        "heads", help="POST /heads on a running service: fit time and test accuracy at k=5..50, one head vs ten",
        description="Against a running graft service (loopback only) with an admin token: fit heads on k "
        "Fashion-MNIST training images per class, classify the 10,000-image test split with each, then time "
        "the same images through one head vs ten. The heads it fits are deleted at the end.",
    )
    heads.add_argument("--url", default="http://127.0.0.1:3000", help="the service (default: %(default)s)")
    heads.add_argument("--token", default=os.environ.get("GRAFT_ADMIN_TOKEN"),
                       help="the service's admin token (default: $GRAFT_ADMIN_TOKEN)")
    heads.add_argument("--api-key", default=os.environ.get("GRAFT_API_KEY"),
                       help="an inference API key, if the service requires one (default: $GRAFT_API_KEY)")
    heads.add_argument("--shots", type=_int_list, default=(5, 10, 20, 50), help="images per class (default 5,10,20,50)")
    heads.add_argument("--test-images", type=positive(int), help="classify only the first N test images (default: all)")
    heads.add_argument("--concurrency", type=positive(int), default=4, help="/classify requests in flight (default: %(default)s)")
    heads.add_argument("--seed", type=int, default=0, help="seeds the training images chosen (default: %(default)s)")
    heads.add_argument("--out", type=Path, help="results folder (default: results/<UTC timestamp>)")
    heads.set_defaults(handler=run_heads)


def run_heads(args: argparse.Namespace) -> int:
    from graft.benchmarks.heads_bench import HeadsBench, Plan, markdown
    from graft.benchmarks.load import require_loopback
    from graft.benchmarks.report import environment, results_dir

    if not args.token:
        raise SystemExit("graft bench heads: expected an admin token (--token or GRAFT_ADMIN_TOKEN), got none")
    require_loopback(args.url)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    out, env = results_dir(args.out), environment()
    plan = Plan(shots=args.shots, seed=args.seed, test_images=args.test_images, concurrency=args.concurrency)
    result = HeadsBench(args.url, args.token, plan, api_key=args.api_key).run()
    env["load_average_end"] = os.getloadavg()
    argv, secret_next = [], False
    for arg in sys.argv[1:]:  # never write a secret into the results
        option = arg.split("=", 1)[0]
        argv.append("***" if secret_next else f"{option}=***" if option in SECRET_OPTIONS and "=" in arg else arg)
        secret_next = arg in SECRET_OPTIONS
    _write({**result, "command": shlex.join(["graft", *argv]), "environment": env}, out, markdown)
    return 0


def register_memory(what: argparse._SubParsersAction) -> None:
    """`graft bench memory`: the server's process tree's memory at idle and under closed-loop load."""
    memory = what.add_parser(
        "memory", help="RSS/USS/PSS of every process of graft serve, idle and under load",
        description="Start `graft serve --model MODEL` (or sample a running server: --url and --pid), sample "
        "its whole process tree idle, then under closed-loop clients on the default model's route (/classify for a "
        "classifier, /embed for an embedder); report per process.",
    )
    memory.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="artifact served (default: %(default)s)")
    memory.add_argument("--url", help="a running graft service (loopback only); needs --pid")
    memory.add_argument("--pid", type=positive(int), help="the running server's main process (its supervisor)")
    memory.add_argument("--clients", type=positive(int), default=16, help="closed-loop clients (default: %(default)s)")
    memory.add_argument("--seconds", type=positive(float), default=600.0, help="seconds of load (default: %(default)s)")
    memory.add_argument("--idle-seconds", type=positive(float), default=5.0,
                        help="seconds sampled idle before the load (default: %(default)s)")
    memory.add_argument("--interval", type=positive(float), default=1.0, help="seconds between samples (default: %(default)s)")
    memory.add_argument("--out", type=Path, help="results folder (default: results/<UTC timestamp>)")
    memory.set_defaults(handler=run_memory)


def run_memory(args: argparse.Namespace) -> int:
    from graft.benchmarks.memory_bench import bench_memory, markdown
    from graft.benchmarks.report import environment, results_dir
    from graft.benchmarks.service_bench import Server, free_port, graft_argv

    if (args.url is None) != (args.pid is None):
        raise SystemExit("graft bench memory: expected --url and --pid together (a running server), got one of them")
    out, env = results_dir(args.out), environment()
    figures = dict(clients=args.clients, seconds=args.seconds, idle_seconds=args.idle_seconds, interval=args.interval)
    if args.url:
        result = bench_memory(args.url, args.pid, out, **figures)
    else:
        port = free_port()
        with Server("graft", graft_argv(args.model, port), port, out / "graft-server.log") as server:
            result = bench_memory(server.url, server.pid, out, **figures)
    env["load_average_end"] = os.getloadavg()
    _write({**result, "command": shlex.join(["graft", *sys.argv[1:]]), "environment": env}, out, markdown)
    return 0


def register_preprocess(what: argparse._SubParsersAction) -> None:
    """`graft bench preprocess`: where an image's CPU time goes before the model, per JPEG size."""
    preprocess = what.add_parser(
        "preprocess", help="decode, resize + crop and normalize times per JPEG size, one thread",
        description="Per stage, median ms per image on the standard JPEGs (224, 640, 2000 px): full vs draft "
        "decode, one Pillow resize then the crop (timm/torchvision) vs graft's, normalize; and a check that "
        "graft's resize gives the same pixels.",
    )
    preprocess.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="artifact whose preprocessing is timed "
                            "(default: %(default)s)")
    preprocess.add_argument("--repeat", type=positive(int), default=15, help="timings per file and stage (default: "
                            "%(default)s)")
    preprocess.add_argument("--out", type=Path, help="results folder (default: results/<UTC timestamp>)")
    preprocess.set_defaults(handler=run_preprocess)


def run_preprocess(args: argparse.Namespace) -> int:
    from graft.artifact.manifest import read_manifest
    from graft.benchmarks.images import make_jpegs
    from graft.benchmarks.preprocess_bench import bench_preprocess, markdown
    from graft.benchmarks.report import environment, results_dir

    out = results_dir(args.out)
    spec = read_manifest(args.model).image_spec
    result = bench_preprocess(spec, make_jpegs(out / "jpegs"), repeat=args.repeat)
    _write({**result, "environment": environment(), "command": shlex.join(["graft", *sys.argv[1:]])}, out, markdown)
    return 0
