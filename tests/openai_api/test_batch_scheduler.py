"""The whole server on the batch scheduler (`TELLER_SCHEDULER=batch`, a tiny Falcon): several
clients stream at once, each on its own adapter, and each gets the answer it would get alone."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from app.adapters.service import registry_for
from app.engine.schedulers.batch import BatchEngine
from tests.adapters.packages import make_package
from tests.support.api import settings_for, start_api

FALCON_PROJECTIONS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
QUESTIONS = ["What is a bond coupon?", "Define working capital.", "What is EBITDA?"]


@pytest.fixture(scope="module")
def falcon_settings(tmp_path_factory: pytest.TempPathFactory, tiny_falcon_dir: Path):  # noqa: ANN201
    root = tmp_path_factory.mktemp("batch-api")
    settings = settings_for(
        root, tiny_falcon_dir, scheduler="batch", max_batch=4, max_concurrent_streams=4
    )
    registry = registry_for(settings)
    for seed, name in enumerate(("growth", "income")):
        package = make_package(
            tiny_falcon_dir, root / name, name=name, seed=seed, targets=FALCON_PROJECTIONS
        )
        registry.import_path(package)
    return settings


def test_concurrent_streams_on_different_adapters_match_their_solo_answers(
    falcon_settings,  # noqa: ANN001
) -> None:
    base = Path(falcon_settings.base_model).name
    plan = [
        (QUESTIONS[0], "growth"),
        (QUESTIONS[1], "income"),
        (QUESTIONS[2], base),
        (QUESTIONS[0], base),
    ]
    with start_api(falcon_settings) as api:
        assert isinstance(api.live.app.state.engine, BatchEngine)
        client = api.client()

        def ask(question: str, model: str) -> str:
            stream = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": question}],
                max_tokens=16,
                temperature=0,
                stream=True,
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        solo = [ask(q, m) for q, m in plan]
        with concurrent.futures.ThreadPoolExecutor(len(plan)) as pool:
            together = list(pool.map(lambda qm: ask(*qm), plan))
    assert all(solo)
    assert together == solo
    assert solo[0] != solo[3]  # the adapter changes the answer to the same question
