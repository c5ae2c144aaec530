"""What the GPU script runs: its stages in order of value, each stage's time limit, and their sizes.

`GPU` is the plan for a lent GPU machine: at most 8 minutes from the pieces' arrival to the report.
`DRY` runs the same stages on the CPU provider with tiny sizes, so the test suite keeps the script
working between GPU runs. Standard library only: the runner reads this before anything is installed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    name: str
    limit_s: float


@dataclass(frozen=True)
class Targets:
    """The GPU issue's targets for one served model (224-px JPEGs, one image per request)."""

    images_per_s: float = 3000.0
    p99_ms: float = 50.0
    warm_start_s: float = 10.0


@dataclass(frozen=True)
class Plan:
    """Sizes and limits of one run.

    Attributes:
        name: "gpu" or "dry".
        gpu: whether the device stage requires ONNX Runtime's CUDA provider (a GPU run that silently
            measured the CPU would be worse than one that failed).
        budget_s: wall time for the whole run; a stage gets what its limit and the budget leave.
        models: artifacts the artifacts stage makes, `<backbone>-<precision>`, most valuable first.
        served: the artifacts the service stages serve, one stage each, most valuable first.
        limits: seconds per stage; a service stage's key is "service".
        workers: server processes (`GRAFT_WORKERS`) in the service stages.
        drivers: load-driver processes sharing each cell's clients: one asyncio process cannot
            send thousands of uploads per second.
        concurrency: clients per load cell.
        cell_s: seconds each load cell sends requests.
        ceiling_batch_sizes: batch sizes of the raw ONNX Runtime ceiling beside each service.
        batch_sizes: batch sizes of the model stage.
        timing: the model stage's `model_bench.Timing` fields.
    """

    name: str
    gpu: bool
    budget_s: float
    models: tuple[str, ...]
    served: tuple[str, ...]
    limits: dict[str, float]
    workers: int
    drivers: int
    concurrency: tuple[int, ...]
    cell_s: float
    ceiling_batch_sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    timing: dict[str, float]
    targets: Targets = field(default_factory=Targets)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        data["targets"] = Targets(**data["targets"])
        values: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**values)

    def stages(self) -> list[Stage]:
        """Install first (nothing runs without it), then the figures in order of value."""
        names = ["install", "device", "artifacts", *(f"service-{key}" for key in self.served), "model", "tests"]
        return [Stage(name, self.limits[name.split("-")[0]]) for name in names]


def split_key(key: str) -> tuple[str, str]:
    """`resnet50-fp16` -> ("resnet50", "fp16")."""
    backbone, _, precision = key.rpartition("-")
    if precision not in ("fp32", "fp16") or not backbone:
        raise ValueError(f"expected an artifact key like resnet50-fp16, got {key!r}")
    return backbone, precision


GPU = Plan(
    name="gpu",
    gpu=True,
    budget_s=480,
    models=("resnet50-fp16", "tf_efficientnet_lite0-fp16", "resnet50-fp32", "tf_efficientnet_lite0-fp32"),
    served=("resnet50-fp16", "tf_efficientnet_lite0-fp16"),
    limits={"install": 120, "device": 60, "artifacts": 180, "service": 150, "model": 120, "tests": 90},
    workers=8,
    drivers=4,
    concurrency=(1, 32, 64, 128, 256),
    cell_s=5.0,
    ceiling_batch_sizes=(1, 8, 32, 64, 128),
    batch_sizes=(1, 8, 32, 128),
    timing={"min_iters": 5, "max_iters": 200, "budget_s": 1.0, "warmup": 3},
)

DRY = Plan(
    name="dry",
    gpu=False,
    budget_s=240,
    models=("tf_efficientnet_lite0-fp32",),
    served=("tf_efficientnet_lite0-fp32",),
    limits={"install": 60, "device": 60, "artifacts": 60, "service": 90, "model": 60, "tests": 60},
    workers=1,
    drivers=2,
    concurrency=(1, 2),
    cell_s=1.0,
    ceiling_batch_sizes=(1, 2),
    batch_sizes=(1, 2),
    timing={"min_iters": 1, "max_iters": 2, "budget_s": 0.1, "warmup": 1},
)

PLANS = {plan.name: plan for plan in (GPU, DRY)}
