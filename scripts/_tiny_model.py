"""What the tiny-model builders (build_tiny_llava.py, build_tiny_qwen2vl.py) do the same way: train a byte-level
BPE tokenizer on a small corpus, perturb the random weights, make generation greedy, check that the saved folder
loads back with the same weights, and put it in place. Each builder keeps its own shapes, tokens and layout.

Imported by the builders as a sibling module (they run as scripts, so their folder is on `sys.path`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def train_tokenizer(corpus: str, special_tokens: list[str], chat_template: str, *, unk_token: str | None = None,
                    **fast_options: Any):
    """A 512-token byte-level BPE trained on `corpus`, wrapped as a `PreTrainedTokenizerFast` with `chat_template`.

    `unk_token` goes to the BPE model and the wrapper alike; `fast_options` (special tokens, `model_max_length`)
    to the wrapper, in the order given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    if unk_token is not None:
        fast_options = {"unk_token": unk_token, **fast_options}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **fast_options)
    fast.chat_template = chat_template
    return fast


def perturb_weights(model: Any) -> None:
    """Random init leaves some norms at exactly 1/0; perturb everything a little (from torch's seeded generator) so
    parity tests would notice a weight mapped to the wrong place."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)


def make_greedy(model: Any, *, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> None:
    """Deterministic, short answers by default (what the tests and benchmarks expect of a random model)."""
    generation = model.generation_config
    generation.do_sample = False
    generation.max_new_tokens = 16
    generation.bos_token_id = bos_token_id
    generation.eos_token_id = eos_token_id
    generation.pad_token_id = pad_token_id


def check_round_trip(model: Any, model_class: Any, folder: Path, label: str) -> None:
    """Load `folder` back with transformers: no missing/unexpected/mismatched keys, every weight equal to `model`'s."""
    import torch

    reloaded, info = model_class.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise RuntimeError(f"the {label} does not load back cleanly: {problems}")
    with torch.no_grad():
        for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
            if not torch.equal(a, b):
                raise RuntimeError(f"weight {name} changed on the round trip")


def install(stage: Path, out: Path) -> Path:
    """Replace `out` with a copy of `stage` and mark it complete (fixtures rebuild a folder without `.complete`)."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(stage, out)
    (out / ".complete").write_text("ok\n")
    return out
