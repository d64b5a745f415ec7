"""bench/serve_load.py's workload and report: prompt and answer lengths in their ranges,
adapters round-robin, the same workload for the same seed, the rate that meets the TTFT goal."""

from __future__ import annotations

from bench.serve_load import highest_rate_within, make_workload, percentile


def test_the_workload_spans_its_ranges_and_repeats_for_a_seed() -> None:
    def words(text: str) -> int:
        return len(text.split())

    def draw(seed: int) -> list[dict]:
        return make_workload(
            requests=40, models=["a", "b", "c"], prompt_tokens=(100, 2000),
            answer_tokens=(50, 500), tokens_of=words, seed=seed,
        )  # fmt: skip

    workload = draw(0)
    assert [r["model"] for r in workload[:4]] == ["a", "b", "c", "a"]
    for request in workload:
        target = request["prompt_tokens_target"]
        assert 100 <= target <= 2000
        assert target <= words(request["messages"][0]["content"]) < target + 40
        assert 50 <= request["max_tokens"] <= 500
    targets = [r["prompt_tokens_target"] for r in workload]
    assert min(targets) < 300 and max(targets) > 1000, "log-uniform: short and long prompts"
    assert draw(0) == workload and draw(1) != workload


def test_the_highest_rate_within_the_goal_skips_failed_levels() -> None:
    levels = [
        {"rate_rps": 1.0, "ttft_p95_ms": 200.0, "errors": []},
        {"rate_rps": 4.0, "ttft_p95_ms": 900.0, "errors": []},
        {"rate_rps": 8.0, "ttft_p95_ms": 700.0, "errors": ["503"]},
        {"rate_rps": 16.0, "ttft_p95_ms": 2500.0, "errors": []},
    ]
    assert highest_rate_within(levels, 1000.0) == 4.0
    assert highest_rate_within(levels[3:], 1000.0) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
