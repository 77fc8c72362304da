"""The grid form of image embeddings (Qwen2-VL style: image_embeds + image_grid_thw), checked before the engine."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from providers import EmbeddingShapeError
from providers.embeddings import EmbeddingShape, GridImage

QWEN = EmbeddingShape(model="tiny-qwen2vl", lm_hidden=64, image_tokens=None, dtype=torch.float32, merge_size=2)
LLAVA = EmbeddingShape(model="tiny-llava", lm_hidden=64, image_tokens=16, dtype=torch.float32)


def _grid_form(*grids: tuple[int, int, int]) -> dict:
    grid = torch.tensor(grids)
    tokens = int(sum(t * h * w for t, h, w in grids)) // 4
    return {"image_embeds": torch.randn(tokens, 64), "image_grid_thw": grid}


def test_grid_form_split_per_image_and_joined_again_in_order():
    first, second = _grid_form((1, 4, 8)), _grid_form((1, 14, 4))
    items = QWEN.split(first) + QWEN.split(second)
    assert [tuple(i.embeds.shape) for i in items if isinstance(i, GridImage)] == [(8, 64), (14, 64)]
    joined = QWEN.check(items)
    assert torch.equal(joined["image_embeds"], torch.cat([first["image_embeds"], second["image_embeds"]]))
    assert joined["image_grid_thw"].tolist() == [[1, 4, 8], [1, 14, 4]]
    assert joined["image_grid_thw"].dtype == torch.int64


def test_grid_form_token_count_must_match_grid():
    value = _grid_form((1, 4, 8), (1, 4, 4))
    with pytest.raises(EmbeddingShapeError, match="means 12 image tokens.*has 11"):
        QWEN.split({**value, "image_embeds": value["image_embeds"][:-1]})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image_grid_thw": torch.tensor([1, 4, 8])}, "image_grid_thw must be an integer tensor"),
        ({"image_grid_thw": torch.tensor([[1.0, 4.0, 8.0]])}, "image_grid_thw must be an integer tensor"),
        ({"image_embeds": torch.randn(1, 8, 64)}, "image_embeds must be a 2-D tensor"),
        ({"extra": 1}, "exactly the keys"),
    ],
)
def test_grid_form_malformed_refused_clearly(change, match):
    with pytest.raises(EmbeddingShapeError, match=match):
        QWEN.split({**_grid_form((1, 4, 8)), **change})


def test_grid_form_hidden_size_checked():
    value = _grid_form((1, 4, 8))
    with pytest.raises(EmbeddingShapeError, match="hidden size 32"):
        QWEN.check(QWEN.split({**value, "image_embeds": torch.randn(8, 32)}))


def test_each_family_refuses_the_other_form():
    with pytest.raises(EmbeddingShapeError, match="image_grid_thw"):
        QWEN.split(torch.randn(1, 16, 64))
    with pytest.raises(EmbeddingShapeError, match="Qwen2-VL-style"):
        LLAVA.split(_grid_form((1, 4, 8)))
