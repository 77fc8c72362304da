#!/usr/bin/env python
"""Build a tiny LLaVA with random weights, locally (no weights can be downloaded here).

The result is a complete Hugging Face folder that vLLM (in-process and as a server),
transformers and `encoders.ClipEncoder.from_llava` all load: config, safetensors in the
layout vLLM 0.32 expects, a byte-level BPE tokenizer with an `<image>` token and a chat
template (with tool rendering), and a CLIP image processor.

Shapes (chosen for vLLM's CPU attention, which needs head sizes like 32/64):
CLIP vision tower hidden 32, patch 14, image 56 px -> 4x4 = 16 image tokens;
Llama hidden 64, 2 heads of 32.

    python scripts/build_tiny_llava.py --out ~/.cache/visual-agent/tiny-llava
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _tiny_model import check_round_trip, install, make_greedy, perturb_weights, train_tokenizer

IMAGE_SIZE = 56
PATCH_SIZE = 14
VISION_HIDDEN = 32
TEXT_HIDDEN = 64
TINY_VISION = {"hidden_size": VISION_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "projection_dim": 32}
BASE_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 224, "patch_size": 16, "projection_dim": 512}
"""`--vision base`: a ViT-B/16-sized tower (196 image tokens), for benchmarks that need a realistic encoder cost."""
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# A chat template in the LLaVA style: images become one `<image>` placeholder each,
# which the processor expands to the image's feature tokens.
CHAT_TEMPLATE = (
    "{% if tools %}SYSTEM: You can call these tools: {{ tools | tojson }}{{ '\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>{{ '\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

CORPUS = """
a camera looks at a room with a table a chair a person a dog a cat a window and a door
the picture shows red green blue yellow black white colours and bright dark light
what do you see in the image describe the scene briefly answer the question
there is nothing moving the scene is static someone walks in the person waves
the weather outside is sunny cloudy rainy the lights are on off
{"name": "get_weather", "arguments": {"city": "Paris"}} tool call function json
0 1 2 3 4 5 6 7 8 9 yes no maybe hello world thanks
""" * 4


def build_tokenizer():
    return train_tokenizer(
        CORPUS,
        SPECIAL_TOKENS,
        CHAT_TEMPLATE,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=512,
    )


def build(out: Path, seed: int = 0, vision: dict | None = None) -> Path:
    """`vision`: CLIPVisionConfig fields over the tiny tower's (`BASE_VISION` for a realistic cost)."""
    vision = {**TINY_VISION, **(vision or {})}
    image_size, patch_size = vision["image_size"], vision["patch_size"]
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tokenizer = build_tokenizer()
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(**vision),
            text_config=LlamaConfig(
                hidden_size=TEXT_HIDDEN,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                vocab_size=len(tokenizer),
                max_position_embeddings=512,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=False,
            ),
            image_token_index=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
        config.dtype = "float32"
        model = LlavaForConditionalGeneration(config).eval()
        perturb_weights(model)
        make_greedy(model, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)

        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            do_resize=True,
            do_normalize=True,
            do_convert_rgb=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            chat_template=CHAT_TEMPLATE,
            image_token="<image>",
            num_additional_image_tokens=1,
        )

        stage = tmp / "model"
        model.save_pretrained(stage, safe_serialization=True)
        processor.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        _rename_to_legacy_layout(stage, load_file, save_file)

        # Make sure what we wrote loads back, in transformers at least.
        check_round_trip(model, LlavaForConditionalGeneration, stage, "tiny LLaVA")
        return install(stage, out)


def _rename_to_legacy_layout(folder: Path, load_file, save_file) -> None:
    """Write the weights with the key names vLLM 0.32 loads (DEVELOPING.md, "Facts about the CPU machines").

    transformers 5.x saves the vision tower as `vision_tower.*`; vLLM 0.32 (and the LLaVA
    checkpoints on the hub) use `vision_tower.vision_model.*`, beside `multi_modal_projector.*`,
    `language_model.model.*` and `language_model.lm_head.*`. transformers reads this layout too.
    Other spellings (`model.` prefixes, a bare `lm_head`) are mapped the same way.
    """
    files = sorted(folder.glob("*.safetensors"))
    renamed = {}
    for path in files:
        for key, tensor in load_file(str(path)).items():
            renamed[_legacy_key(key)] = tensor.contiguous()
        path.unlink()
    index = folder / "model.safetensors.index.json"
    if index.exists():
        index.unlink()
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _legacy_key(key: str) -> str:
    if key.startswith("model."):
        key = key[len("model.") :]
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + key[len("vision_tower.") :]
    if key.startswith("language_model.") and not key.startswith(("language_model.model.", "language_model.lm_head.")):
        return "language_model.model." + key[len("language_model.") :]
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision", choices=("tiny", "base"), default="tiny", help="base: a ViT-B/16-sized tower")
    args = parser.parse_args(argv)
    path = build(args.out.expanduser(), seed=args.seed, vision=BASE_VISION if args.vision == "base" else None)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    print(f"tiny LLaVA written to {path} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
