"""`/v1` answers carry each calculation with its result inserted, streamed and not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.api import settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine

SCRIPT = ["Growth was ", "<<calc: percent(150 - 120, 120)", ">>", "%; margin ",
          "<<calc: 3 / 0", ">>", "."]  # fmt: skip
EXPECTED = (
    "Growth was <<calc: percent(150 - 120, 120)>> = 25%; margin "
    "<<calc: 3 / 0>> = [error: division by zero]."
)


@pytest.mark.parametrize("stream", [False, True])
def test_results_are_inserted(tmp_path: Path, tiny_llama_dir: Path, stream: bool) -> None:
    engine = ScriptedEngine(SCRIPT)
    with start_api(settings_for(tmp_path, tiny_llama_dir), engine=engine) as api:
        client = api.client()
        base = client.models.list().data[0].id
        messages = [{"role": "user", "content": "How fast did sales grow?"}]
        if stream:
            chunks = client.chat.completions.create(model=base, messages=messages, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(model=base, messages=messages)
            text = answer.choices[0].message.content
        assert text == EXPECTED
        assert api.api_calls()[-1]["text"] == EXPECTED  # the audit row holds the same text
    # The continuations asked the engine to go on with the answer so far.
    assert [r.continue_final for r in engine.requests] == [False, True, True]
    partial = engine.requests[2].messages[-1].content
    assert partial.endswith("= 25%; margin <<calc: 3 / 0>> = [error: division by zero]")
