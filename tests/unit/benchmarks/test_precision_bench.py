"""`graft bench model --compare`: artifacts side by side, interleaved, ratios to the first, the CPU named."""

from __future__ import annotations

from graft.benchmarks import precision_bench
from graft.benchmarks.model_bench import Timing
from tests.synthetic import pictures, write_artifact


def test_compare_gives_each_artifact_each_batch_size_and_its_ratio(tmp_path):
    first, second = write_artifact(tmp_path / "a"), write_artifact(tmp_path / "b", headless=True)
    images = []
    for label, picture in pictures().items():
        images.append(tmp_path / f"{label}.png")
        picture.save(images[-1])
    rows = precision_bench.compare([tmp_path / "a", tmp_path / "b"], images, (1, 4), threads=1, rounds=2,
                                   timing=Timing(min_iters=1, max_iters=2, budget_s=0.01, warmup=1))
    assert [(r["artifact"], r["batch_size"]) for r in rows] == [("a", 1), ("a", 4), ("b", 1), ("b", 4)]
    assert [r["model"] for r in rows] == [first.name] * 2 + [second.name] * 2
    assert all(r["ratio"] == 1.0 for r in rows[:2]) and all(len(r["rounds"]) == 2 and r["images_per_s"] > 0 for r in rows)
    cpu = precision_bench.cpu_flags()
    text = precision_bench.markdown({"cpu": cpu, "environment": {"cpus": 2}, "command": "graft bench model --compare a b",
                                     "rows": rows})
    assert cpu["cpu_model"] in text and f"avx512_vnni {'yes' if cpu['avx512_vnni'] else 'no'}" in text
    assert "| b | fp32 | 4 |" in text
