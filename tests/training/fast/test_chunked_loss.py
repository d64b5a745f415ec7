"""The chunked loss is the model's own loss: same value and gradients, in several chunks."""

from __future__ import annotations

import pytest
import torch

from tests.training.samples import lora_model, make_examples
from training.data.encoding import IGNORE_INDEX
from training.data.packing import collate, pack_rows
from training.fast.chunked_loss import chunked_loss


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_chunked_loss_matches_model_loss_and_gradients(
    arch: str, request: pytest.FixtureRequest
) -> None:
    model = lora_model(request.getfixturevalue(f"tiny_{arch}_dir"))
    examples = make_examples(model.config.vocab_size, [(7, 5), (4, 9), (11, 3), (5, 6), (3, 20)])
    batch = collate(pack_rows(examples, max_seq_len=32), pad_id=0, attention="sdpa")
    n_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    params = [p for p in model.parameters() if p.requires_grad]

    reference = model(**batch, use_cache=False, num_items_in_batch=n_items).loss
    expected = torch.autograd.grad(reference, params)
    ours = chunked_loss(model, batch, n_items, chunk=7)  # several chunks, one partial
    got = torch.autograd.grad(ours, params)

    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
