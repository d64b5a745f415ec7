"""bench/serve_gpu.py --smoke runs the whole GPU serving benchmark on CPU with a tiny Falcon:
baseline, the batch engine at two concurrency levels, HTTP/SSE through the real app."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.bench_smoke import run_smoke


def test_serving_bench_smoke_writes_every_section(tmp_path: Path) -> None:
    results = run_smoke(
        "serve_gpu.py",
        tmp_path / "serve-gpu.json",
        *("--variants", "bnb+defer2,bnb", "--http-each", "--repeats", "2"),
        *("--http-also", "gather2000", "--http-process"),
        timeout=600,
        cwd=tmp_path,
    )
    assert results["baseline"]["decode_tok_s"] > 0
    teller = results["teller"]["bnb"]
    assert teller["decode_tok_s"] > 0 and teller["ttft_512_ms"] > 0
    assert [level["streams"] for level in teller["concurrency"]] == [2, 4]
    assert all(not level["errors"] for level in teller["concurrency"])
    # each level timed twice, the median pass (of two: the slower) reported with both
    for level in [*teller["concurrency"], results["http"]]:
        assert level["aggregate_tok_s"] == min(level["passes_tok_s"])
        assert len(level["passes_tok_s"]) == 2
    assert results["correctness"]["greedy_shared_prefix_of_32"] == 32  # float32 on CPU
    # each variant's decode logits against bitsandbytes' (on CPU the same forward: equal for
    # the first; later ones run on a model whose earlier engine added adapter layers)
    checked = results["teller"]["bnb+defer2"]["against_bitsandbytes"]
    assert checked["one_row_logits_rel_l2"] == checked["rows_logits_rel_l2"] == 0.0
    assert checked["one_row_same_argmax"] == checked["rows_same_argmax"] == 1.0
    assert teller["against_bitsandbytes"]["rows_logits_rel_l2"] < 1e-5
    http = results["http"]
    assert http["ok"] == http["streams"] == 8 and http["output_tokens"] > 0
    fresh = http["new_connections_each_pass"]  # the same passes, a new client each
    assert fresh["ok"] == 8 and len(fresh["passes_tok_s"]) == 2
    # the server's view of each timed burst, from its audit rows
    view = http["server_view"]
    assert len(view["arrival_spread_ms"]) == len(view["first_token_p50_ms"]) == 2
    assert all(spread >= 0 for spread in view["arrival_spread_ms"])
    # --http-also: the same passes again with a switch the engine reads as it runs
    gathered = http["with_switches"]["gather2000"]
    assert gathered["ok"] == 8 and len(gathered["server_view"]["first_token_p95_ms"]) == 2
    # the /v1 requests straight into the engine: as many prompt tokens as HTTP counted
    alike = teller["same_requests_as_http"]
    assert alike["streams"] == 8 and not alike["errors"]
    assert alike["prompt_tokens"] == http["prompt_tokens"]
    # how many prompt forwards each burst took, in process and read off the server's /metrics
    assert 1 <= alike["prefill_batches"] <= 8 and 1 <= http["prefill_batches"] <= 8
    assert http["share_of_same_requests"] == http["aggregate_tok_s"] / alike["aggregate_tok_s"]
    # --http-each: every variant's own /v1 figures, the last one's also as `http`
    assert teller["http"] == http
    deferred = results["teller"]["bnb+defer2"]["http"]
    assert deferred["ok"] == 8 and 0 < deferred["share_of_same_requests"]
    assert "engine_process" not in deferred  # --http-process: the last variant's only
    # --http-process: /v1 again over the same engine in a process of its own
    process = http["engine_process"]
    assert process["ok"] == 8 and process["ready_s"] > 0 and not process["errors"]
    assert process["prompt_tokens"] == http["prompt_tokens"]  # the same requests
    assert "with_switches" not in process  # those are set in this process, not the engine's
    assert set(results["floor"]) == {"copy_gb_s", "bytes_per_token", "tok_s"}


def test_a_variant_names_engine_switches_that_the_next_one_resets() -> None:
    from app.engine.kernels import (
        decode_attention,
        nf4_mma,
        nf4_routing,
        norm_low_rank,
        pdl,
        silu_mul,
    )
    from app.engine.schedulers import batch, waiting
    from bench.serve_switches import apply_variant

    served = nf4_mma.CANDIDATE_GEMV
    assert served[7:] == (2, 0)  # two blocks an SM, no L2 requests for the next tile
    assert nf4_routing.SHARED_ROWS_FROM == 17 and nf4_routing.NARROW_ROWS_FROM is None
    assert apply_variant("mma+shared33+occupy1+sdpa+nofold+nopdl") == "mma"
    assert norm_low_rank.ENABLED is False and pdl.ENABLED is False
    assert nf4_routing.SHARED_ROWS_FROM == 33
    assert nf4_mma.CANDIDATE_GEMV == (*served[:7], 1, 0, 0)
    assert decode_attention.ENABLED is False
    apply_variant("mma+l2next+splitk+silufold+noshared+narrow9")
    assert nf4_routing.SHARED_ROWS_FROM is None and nf4_routing.NARROW_ROWS_FROM == 9
    assert silu_mul.FOLD is True
    assert nf4_mma.CANDIDATE_GEMV == (*served[:7], 2, 1, 1)
    apply_variant("mma+narrow17+defer4+gil200+gather2000")
    assert nf4_routing.NARROW_ROWS_FROM == 17 and nf4_routing.SHARED_ROWS_FROM == 17
    assert waiting.ADMIT_DEFER_STEPS == 4 and batch.SWITCH_INTERVAL_S == 0.0002
    assert waiting.GATHER_QUIET_S == 0.002
    assert apply_variant("hybrid") == "hybrid"
    assert nf4_routing.SHARED_ROWS_FROM == 17 and nf4_routing.NARROW_ROWS_FROM is None
    assert waiting.ADMIT_DEFER_STEPS == 0 and batch.SWITCH_INTERVAL_S == 0.001
    assert waiting.GATHER_QUIET_S == 0
    assert nf4_mma.CANDIDATE_GEMV == served
    assert decode_attention.ENABLED is True
    assert norm_low_rank.ENABLED is True and pdl.ENABLED is True and silu_mul.FOLD is False
    with pytest.raises(ValueError, match="unknown switch 'fast'.*fold, pdl"):
        apply_variant("mma+fast")
