#!/usr/bin/env python
"""Build a tiny Qwen2-VL with random weights, locally (no weights can be downloaded here).

The second model family of the embeddings path (the first is scripts/build_tiny_llava.py): a complete Hugging
Face folder that vLLM (in-process, raw images or `image_embeds` + `image_grid_thw`), transformers and
`encoders.encoder_for` all load. The recipe (DEVELOPING.md, "Facts about the CPU machines"):

text: Qwen2 hidden 64, 2 heads of 32 (a head size the CPU attention backend takes), M-RoPE sections [4, 6, 6]
(they sum to head_dim / 2); vision: embed_dim 32, hidden_size 64 (= the LM's), patch 14, spatial merge 2,
temporal patch 2; a byte-level BPE tokenizer trained here with Qwen's special tokens; an image processor with
min_pixels 56*56 and max_pixels 112*112, so an image costs a few tokens (100x60 -> grid (1, 4, 8) -> 8 tokens).

    python scripts/build_tiny_qwen2vl.py --out ~/.cache/visual-agent/tiny-qwen2vl
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _tiny_model import check_round_trip, install, make_greedy, perturb_weights, train_tokenizer

TEXT_HIDDEN = 64
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template, shortened: tools rendered in the system turn (hermes style), one
# `<|vision_start|><|image_pad|><|vision_end|>` per image, which the processor expands to the image's tokens.
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou can call these tools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = """
a camera looks at a room with a table a chair a person a dog a cat a window and a door
the picture shows red green blue yellow black white colours and bright dark light
what do you see in the image describe the scene briefly answer the question
there is nothing moving the scene is static someone walks in the person waves
{"name": "get_weather", "arguments": {"city": "Paris"}} tool call function json
0 1 2 3 4 5 6 7 8 9 yes no maybe hello world thanks system user assistant
""" * 4


def build_tokenizer():
    return train_tokenizer(
        CORPUS, SPECIAL_TOKENS, CHAT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=512
    )


def build(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": TEXT_HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.dtype = "float32"
    model = Qwen2VLForConditionalGeneration(config).eval()
    perturb_weights(model)
    make_greedy(model, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])

    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    common = {"patch_size": PATCH_SIZE, "merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels, **common),
        video_processor=Qwen2VLVideoProcessor(**pixels, **common),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        stage = Path(tmpdir) / "model"
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        check_round_trip(model, Qwen2VLForConditionalGeneration, stage, "tiny Qwen2-VL")
        return install(stage, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.out.expanduser(), seed=args.seed)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    print(f"tiny Qwen2-VL written to {path} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
