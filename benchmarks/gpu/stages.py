"""One stage of the GPU script, run by run.py as a process of its own:

    python benchmarks/gpu/stages.py NAME --work DIR --plan-file DIR/plan.json [--model KEY=DIR ...]

Each stage writes `result.json` (its figures, saved as they come: a stage stopped at its time limit
keeps what it had measured) and `section.md` (its part of the report) into `--folder`; an exception
ends it, its message the reason the report gives. Module level is standard library only: graft and
the benchmark code are imported inside the stages, once the install stage has put them on the path.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import bundle
from context import Context, StageFailed, one_line
from plan import Plan, split_key

REPO = Path(__file__).resolve().parents[2]
logger = logging.getLogger("graft.gpu")


def _pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *args],
                   check=True, env=env)


def _unmet(site: Path) -> list[str]:
    """Requirements of what was installed into `site` that nothing on the path satisfies."""
    from importlib import metadata

    from packaging.requirements import Requirement

    sys.path.insert(0, str(site))
    problems = []
    for dist in metadata.distributions(path=[str(site)]):
        for requirement in map(Requirement, dist.requires or ()):
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                version = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{dist.metadata['Name']} needs {requirement}, none is installed")
                continue
            if not requirement.specifier.contains(version, prereleases=True):
                problems.append(f"{dist.metadata['Name']} needs {requirement}, got {version}")
    return problems


def install(ctx: Context) -> None:
    """Unpack the carried bundle (once per bundle) and install its wheels, then graft from this
    checkout, into `work/site`, which every later stage has first on its path; carried artifacts go
    to `work/artifacts`."""
    site, tools = ctx.work / "site", ctx.work / "build-tools"
    found = ctx.result["pieces"] = bundle.gather([ctx.pieces], ctx.work / "pieces")
    complete = [bundle_id for bundle_id, entry in found.items() if not entry["missing"]]
    if found and not complete:
        raise StageFailed(f"expected every piece of a bundle, got {found}: send the missing ones (.gpu-bundle/PLAN.md)")
    ctx.result["bundle"] = None
    if complete:
        newest = max(complete, key=lambda bundle_id: found[bundle_id]["mtime"])
        marker = ctx.work / "installed-bundle"
        if marker.is_file() and marker.read_text() == newest:
            ctx.result["bundle"] = {"id": newest, "wheels": "installed by an earlier run on this machine"}
        else:
            unpacked = ctx.work / "bundle"
            bundle.unpack(ctx.work / "pieces", newest, found[newest]["count"], unpacked)
            for folder, target in (("build", tools), ("wheels", site)):
                shutil.rmtree(target, ignore_errors=True)
                wheels = sorted(str(path) for path in (unpacked / folder).glob("*.whl"))
                if wheels:
                    _pip("--target", str(target), *wheels)
            carried = sorted((unpacked / "artifacts").glob("*"))
            for directory in carried:  # where the artifacts stage finds them
                target = ctx.work / "artifacts" / directory.name
                shutil.rmtree(target, ignore_errors=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                directory.rename(target)
            ctx.result["bundle"] = {"id": newest, "wheels": sorted(p.name for p in unpacked.rglob("*.whl")),
                                    "artifacts": [directory.name for directory in carried]}
            marker.write_text(newest)
    # graft is built from the checkout on every run, so what runs is what was carried; its build
    # backend comes from the bundle where the host's is too old for pyproject.toml.
    paths = [str(tools)] if tools.is_dir() else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    _pip("--upgrade", "--no-build-isolation", "--target", str(site), str(REPO), env=env)
    ctx.result["unmet"] = _unmet(site)
    wheels = (ctx.result["bundle"] or {}).get("wheels", "none: this environment's packages")
    ctx.parts += ["## Install", f"Carried wheels: {wheels}. graft: built from this checkout into {site}."]
    if ctx.result["unmet"]:
        ctx.parts.append("Unmet requirements (installed, but may break):\n\n" + "\n".join(f"- {p}" for p in ctx.result["unmet"]))


def _nvidia_smi() -> dict:
    fields = ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm")
    try:
        text = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {"gpus": [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in text.splitlines() if line]}


def _probe_model(path: Path) -> None:
    """A conv and a pool, enough to load cuDNN: a provider that cannot run it cannot run a backbone."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"]), helper.make_node("GlobalAveragePool", ["conv"], ["output"])],
        "probe", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8, 1, 1])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what every ONNX Runtime since 1.15 reads
    save(model, str(path))


def _providers_got(ctx: Context, model: Path, wanted: tuple[str, ...]) -> dict:
    import numpy as np
    import onnxruntime as ort

    from graft.artifact.runtime import session_providers

    row: dict = {"wanted": list(wanted)}
    try:
        providers = session_providers(wanted, trt_cache_dir=ctx.work / "trt-cache", input_name="input",
                                      input_shape=(3, 32, 32), max_batch=8)
        session = ort.InferenceSession(str(model), providers=providers)
        session.run(None, {"input": np.ones((4, 3, 32, 32), np.float32)})
        row["got"] = session.get_providers()
    except Exception as error:  # the probe's point is to report what fails, and how
        row["error"] = one_line(error)
    return row


def device(ctx: Context) -> None:
    """The driver nvidia-smi sees, versions, and the providers ONNX Runtime really runs a model on
    when graft asks for TensorRT, CUDA or the CPU (graft's own provider choice and library preload)."""
    smi = ctx.result["nvidia_smi"] = _nvidia_smi()
    gpus = smi.get("gpus", [])
    ctx.result["device"] = "; ".join(
        f"{g['name']} ({g['memory.total']}, driver {g['driver_version']}, compute {g['compute_cap']})" for g in gpus
    ) or f"no NVIDIA GPU ({smi.get('error', 'nvidia-smi listed none')})"
    ctx.save()
    import onnxruntime as ort
    import torch

    from graft.benchmarks.report import environment

    ctx.result["environment"] = environment()
    ctx.result["onnxruntime"] = {"version": ort.__version__, "module": ort.__file__,
                                 "available": ort.get_available_providers()}
    ctx.result["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    _probe_model(ctx.folder / "probe.onnx")
    ctx.result["sessions"] = [
        _providers_got(ctx, ctx.folder / "probe.onnx", wanted)
        for wanted in (("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
                       ("CUDAExecutionProvider", "CPUExecutionProvider"), ("CPUExecutionProvider",))
    ]
    lines = [f"- asked for {' > '.join(s['wanted'])}: got {' > '.join(s['got']) if 'got' in s else s['error']}"
             for s in ctx.result["sessions"]]
    ctx.parts += [
        "## Device", f"{ctx.result['device']}; {ctx.result['environment']['cpu']}, {ctx.result['environment']['cpus']} CPUs",
        f"ONNX Runtime {ort.__version__} ({ort.__file__}), providers listed: {', '.join(ort.get_available_providers())}; "
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, device {ctx.result['torch']['device']}).",
        "Sessions on a probe graph (conv + pool), through graft's provider choice:\n\n" + "\n".join(lines),
    ]
    cuda = ctx.result["sessions"][1].get("got", [])
    if ctx.plan.gpu and "CUDAExecutionProvider" not in cuda:
        raise StageFailed(f"expected ONNX Runtime to run on CUDAExecutionProvider, got {ctx.result['sessions'][1]}")


def _made(row: dict) -> str:
    if "error" in row:
        return row["error"]
    took = f" in {row['seconds']} s" if "seconds" in row else ""
    return f"{row['made']}{took}, {row['mb']} MB, top-1 agreement with PyTorch {row['parity']}"


def artifacts(ctx: Context) -> None:
    """Export every artifact the plan names (random weights: speed does not depend on their values),
    unless given with --model, carried in the bundle or made by an earlier run on this machine."""
    from graft.artifact.manifest import MODEL_FILE, read_manifest

    rows = ctx.result["artifacts"] = []
    for key in ctx.plan.models:
        backbone, precision = split_key(key)
        directory = ctx.provided.get(key) or ctx.work / "artifacts" / key
        row = {"key": key, "path": str(directory), "made": "given" if key in ctx.provided else "on disk"}
        rows.append(row)
        if key not in ctx.provided and not (directory / "manifest.json").is_file():
            started = time.perf_counter()
            try:
                from graft.export import export_backbone  # torch: imported only when something is exported

                export_backbone(backbone, directory, weights="none", precision=precision, overwrite=True)
            except Exception as error:  # one backbone failing leaves the others to measure
                logger.exception("exporting %s failed", key)
                row["error"] = one_line(error)
                ctx.save()
                continue
            row.update(made="exported", seconds=round(time.perf_counter() - started, 1))
        manifest = read_manifest(directory)
        row.update(precision=manifest.precision, mb=round((directory / MODEL_FILE).stat().st_size / 1e6, 1),
                   parity={name: figures.top1_agreement for name, figures in manifest.parity.items()})
        ctx.save()
    ctx.parts += ["## Artifacts", "\n".join(f"- {r['key']}: {_made(r)}" for r in rows)]
    failed = [r["key"] for r in rows if "error" in r]
    if failed:
        raise StageFailed(f"could not export {', '.join(failed)}")


def model(ctx: Context) -> None:
    """`graft bench model`'s measurement, for the GPU: PyTorch eager and ONNX Runtime (the FP32 and
    the FP16 graph) on each backbone and batch size; CPU engines only where no GPU engine runs."""
    import numpy as np
    from tqdm import tqdm

    from graft.benchmarks.model_bench import EngineUnavailable, Timing, ort_engines, sweep, torch_engines
    from graft.benchmarks.report import model_table, plot_model
    from graft.models.backbones import image_backbone

    rows = ctx.result["rows"] = []
    skipped = ctx.result["skipped"] = {}
    try:
        for backbone in dict.fromkeys(split_key(key)[0] for key in ctx.plan.models):
            engines = dict(torch_engines(backbone, "none"))  # random init, as the artifacts
            for precision in ("fp32", "fp16"):
                key = f"{backbone}-{precision}"
                if key not in ctx.plan.models:
                    continue
                try:
                    artifact = ctx.artifact(key)
                except StageFailed as missing:  # the other precision and PyTorch still run
                    skipped[key] = str(missing)
                    continue
                for name, build in ort_engines(artifact, ctx.work / "ort-cache").items():
                    if precision == "fp32" or "tensorrt" not in name:  # TensorRT makes its own FP16
                        engines[name] = build
            if any("cpu" not in name for name in engines):
                engines = {name: build for name, build in engines.items() if "cpu" not in name}
            shape = (3, *image_backbone(backbone).preprocessing.input_size)
            rng = np.random.default_rng(0)
            inputs = {b: rng.standard_normal((b, *shape), dtype=np.float32) for b in ctx.plan.batch_sizes}
            with tqdm(total=len(engines) * len(inputs), desc=f"model {backbone}", unit="cell") as progress:
                for name, build in engines.items():
                    try:
                        run = build()
                    except EngineUnavailable as error:
                        skipped[f"{backbone} {name}"] = str(error)
                        progress.update(len(inputs))
                        continue
                    timing = Timing(**ctx.plan.timing)
                    rows += [{"backbone": backbone, **row} for row in sweep(name, run, inputs, timing, progress)]
                    del run  # free the model before the next engine loads its own
                    ctx.save()
    finally:
        if rows:
            plot_model(rows, ctx.folder / "model.png")
        ctx.parts += ["## Model: images/s and latency per batch (random weights; host arrays in, as a server's)",
                      model_table(rows)]
        if skipped:
            ctx.parts.append("Not run: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()))


def tests(ctx: Context) -> None:
    """The `gpu`-marked tests of this checkout."""
    import xml.etree.ElementTree as ElementTree

    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    ctx.result["files"] = files
    if not files:
        ctx.parts += ["## GPU tests", "No test is marked `gpu`."]
        return
    junit = ctx.folder / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           *files], cwd=REPO)
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    if suite is None:
        raise StageFailed(f"pytest -m gpu exited {done.returncode} and wrote no test suite to {junit.name}")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failing = [f"{case.get('classname')}.{case.get('name')}" for case in suite.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    ctx.result.update(counts=counts, failing=failing, returncode=done.returncode)
    ctx.parts += ["## GPU tests", f"{', '.join(files)}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                  + (f"; failing: {', '.join(failing)}" if failing else "")]
    if done.returncode != 0:
        raise StageFailed(f"pytest -m gpu exited {done.returncode}: {', '.join(failing) or 'see stage.log'}")


def _stop(signum: int, _frame) -> None:
    # run.py's time limit sends SIGTERM: leave through the context managers, which stop the servers
    # this stage started (they run in sessions of their own, out of reach of the stage's group).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    from serving import service

    parser = argparse.ArgumentParser(description="run one stage of the GPU script (run.py runs them all)")
    parser.add_argument("name")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="this stage's output folder")
    parser.add_argument("--plan-file", type=Path, required=True)
    parser.add_argument("--pieces", type=Path, required=True, help="where carried bundle pieces arrive")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    signal.signal(signal.SIGTERM, _stop)
    ctx = Context(plan=Plan.from_json(args.plan_file.read_text()), work=args.work, folder=args.folder,
                  provided={key: Path(d).resolve() for key, _, d in (m.partition("=") for m in args.model)},
                  pieces=args.pieces)
    stages = {"install": install, "device": device, "artifacts": artifacts, "model": model, "tests": tests}
    try:
        if args.name.startswith("service-"):
            service(ctx, args.name.removeprefix("service-"))
        else:
            stages[args.name](ctx)
    except Exception as error:
        logger.exception("stage %s failed", args.name)
        ctx.result["error"] = one_line(error)
        return 1
    finally:
        ctx.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
