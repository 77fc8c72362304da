"""Read a local Hugging Face LLaVA folder and rebuild its vision tower in open_clip, plus its projector.

What it reads: `config.json` (a `llava` config with a CLIP vision config), the safetensors weights
(`vision_tower.vision_model.*` as on the hub and in vLLM's layout, or transformers 5.x's `vision_tower.*`,
either with a `model.` prefix; `multi_modal_projector.linear_{1,2}.*`), and the image-processor config
(`preprocessor_config.json`, or the `image_processor` part of `processor_config.json`).

How HF CLIP maps onto open_clip's VisionTransformer: q/k/v projections concatenate into the attention's
`in_proj`; `pre_layrnorm` -> `ln_pre`, `layer_norm{1,2}` -> `ln_{1,2}`, `fc{1,2}` -> `c_fc`/`c_proj`,
`post_layernorm` -> `ln_post`; the patch conv has no bias in either. open_clip derives heads as
`width // head_width`, so `head_width` is set from the config (narrow towers would get 0 heads otherwise).
A CLIPVisionModel has no projection after `ln_post`: `proj` is the identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import CheckpointError, UnsupportedVisionConfigError
from .preprocess import PreprocessConfig

__all__ = ["LlavaCheckpoint", "LlavaProjector", "VisionSpec", "build_open_clip_vision", "read_llava_checkpoint"]

_VISION_ACTS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
_PROJECTOR_ACTS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SELECT_STRATEGIES = ("default", "full")


@dataclass(frozen=True)
class VisionSpec:
    """The CLIP vision tower's shape, as far as open_clip needs it."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    hidden_act: str
    layer_norm_eps: float

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class LlavaCheckpoint:
    """Everything `ClipEncoder.from_llava` needs from a LLaVA folder."""

    path: Path
    vision: VisionSpec
    feature_layers: tuple[int, ...]
    """Hidden-state indices whose features are concatenated (one for plain LLaVA); HF indexing, 0 = embeddings."""
    select_strategy: str
    """'default' drops the CLS token, 'full' keeps it."""
    projector_act: str
    text_hidden_size: int
    dtype: torch.dtype
    """The checkpoint's dtype (the language model's), which vLLM's embeddings should have."""
    preprocess: PreprocessConfig

    @property
    def image_tokens(self) -> int:
        return self.vision.num_patches + (1 if self.select_strategy == "full" else 0)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def _require(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise CheckpointError(f"{where} has no '{key}'; is this a LLaVA checkpoint?")
    return cfg[key]


def read_llava_checkpoint(path: str | Path) -> LlavaCheckpoint:
    """Parse and check a LLaVA folder's configs (weights are read later by `load_weights`)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder; from_llava needs a local Hugging Face LLaVA folder")
    config = _load_json(root / "config.json") if (root / "config.json").exists() else None
    if config is None:
        raise CheckpointError(f"{root} has no config.json; from_llava needs a local Hugging Face LLaVA folder")
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llava" and not any(str(a).startswith("Llava") for a in architectures):
        raise CheckpointError(
            f"{root}/config.json is model_type={config.get('model_type')!r}, not a LLaVA checkpoint "
            "(needs model_type 'llava' with a vision_config and a text_config)"
        )
    vcfg = _require(config, "vision_config", "config.json")
    tcfg = _require(config, "text_config", "config.json")
    if vcfg.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise UnsupportedVisionConfigError(
            f"vision_config.model_type={vcfg.get('model_type')!r}: only CLIP vision towers can be run by open_clip"
        )
    vision = _vision_spec(vcfg)

    layer = config.get("vision_feature_layer", -2)
    layers = (layer,) if isinstance(layer, int) else tuple(layer)
    depth = vision.num_layers
    for idx in layers:
        if not isinstance(idx, int) or not -(depth + 1) <= idx <= depth:
            raise UnsupportedVisionConfigError(
                f"vision_feature_layer={layer!r} is out of range for a tower with {depth} layers"
            )
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in _SELECT_STRATEGIES:
        raise UnsupportedVisionConfigError(f"vision_feature_select_strategy={strategy!r} (supported: default, full)")
    act = config.get("projector_hidden_act", "gelu")
    if act not in _PROJECTOR_ACTS:
        raise UnsupportedVisionConfigError(f"projector_hidden_act={act!r} (supported: {', '.join(_PROJECTOR_ACTS)})")
    dtype_name = (
        config.get("dtype") or config.get("torch_dtype") or tcfg.get("dtype") or tcfg.get("torch_dtype") or "float32"
    )
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"config.json dtype={dtype_name!r} is not one of {sorted(_DTYPES)}")
    return LlavaCheckpoint(
        path=root,
        vision=vision,
        feature_layers=layers,
        select_strategy=strategy,
        projector_act=act,
        text_hidden_size=int(_require(tcfg, "hidden_size", "text_config")),
        dtype=_DTYPES[dtype_name],
        preprocess=_preprocess_config(root, vision),
    )


def _vision_spec(vcfg: dict[str, Any]) -> VisionSpec:
    hidden = int(vcfg.get("hidden_size", 768))
    heads = int(vcfg.get("num_attention_heads", 12))
    if heads < 1 or hidden % heads:
        raise UnsupportedVisionConfigError(
            f"vision_config.num_attention_heads={heads} does not divide hidden_size={hidden}"
        )
    act = vcfg.get("hidden_act", "quick_gelu")
    if act not in _VISION_ACTS:
        raise UnsupportedVisionConfigError(
            f"vision_config.hidden_act={act!r}: open_clip's VisionTransformer supports {', '.join(_VISION_ACTS)}"
        )
    if int(vcfg.get("num_channels", 3)) != 3:
        raise UnsupportedVisionConfigError(f"vision_config.num_channels={vcfg['num_channels']}: open_clip takes 3")
    image_size, patch = vcfg.get("image_size", 224), vcfg.get("patch_size", 32)
    if not isinstance(image_size, int) or not isinstance(patch, int):
        raise UnsupportedVisionConfigError(
            f"vision_config.image_size={image_size!r} / patch_size={patch!r}: only square int sizes are supported"
        )
    if image_size % patch:
        raise UnsupportedVisionConfigError(
            f"vision_config.image_size={image_size} is not a multiple of patch_size={patch}"
        )
    return VisionSpec(
        hidden_size=hidden,
        intermediate_size=int(vcfg.get("intermediate_size", 3072)),
        num_layers=int(vcfg.get("num_hidden_layers", 12)),
        num_heads=heads,
        image_size=image_size,
        patch_size=patch,
        hidden_act=act,
        layer_norm_eps=float(vcfg.get("layer_norm_eps", 1e-5)),
    )


def _preprocess_config(root: Path, vision: VisionSpec) -> PreprocessConfig:
    if (root / "preprocessor_config.json").exists():
        cfg = _load_json(root / "preprocessor_config.json")
    elif (root / "processor_config.json").exists() and "image_processor" in _load_json(root / "processor_config.json"):
        cfg = _load_json(root / "processor_config.json")["image_processor"]
    else:
        raise CheckpointError(
            f"{root} has no preprocessor_config.json (nor an image_processor in processor_config.json): "
            "cannot know how the model expects images resized and normalised"
        )
    pre = PreprocessConfig.from_hf(cfg)
    if pre.output_size is not None and pre.output_size != (vision.image_size, vision.image_size):
        raise UnsupportedVisionConfigError(
            f"the image processor makes {pre.output_size} images but vision_config.image_size is {vision.image_size}"
        )
    return pre


def build_open_clip_vision(spec: VisionSpec) -> nn.Module:
    """An open_clip VisionTransformer with this shape (random weights until `load_weights`)."""
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    mlp_ratio = spec.intermediate_size / spec.hidden_size
    act_kwargs = {"approximate": "tanh"} if spec.hidden_act in ("gelu_new", "gelu_pytorch_tanh") else None
    cfg = CLIPVisionCfg(
        layers=spec.num_layers,
        width=spec.hidden_size,
        head_width=spec.hidden_size // spec.num_heads,
        mlp_ratio=mlp_ratio,
        patch_size=spec.patch_size,
        image_size=spec.image_size,
        act_kwargs=act_kwargs,
        norm_kwargs={"eps": spec.layer_norm_eps},
    )
    visual = _build_vision_tower(spec.hidden_size, cfg, quick_gelu=spec.hidden_act == "quick_gelu")
    built_mlp = visual.transformer.resblocks[0].mlp.c_fc.out_features if spec.num_layers else spec.intermediate_size
    if built_mlp != spec.intermediate_size:
        raise UnsupportedVisionConfigError(
            f"vision_config.intermediate_size={spec.intermediate_size} cannot be expressed as open_clip's "
            f"int(width * mlp_ratio) (got {built_mlp})"
        )
    return visual


class LlavaProjector(nn.Module):
    """LLaVA's multimodal projector: linear_1 -> activation -> linear_2 (weights named as in the checkpoint)."""

    def __init__(self, in_features: int, hidden: int, act: str, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden, bias=bias)
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)
        self.act_name = act
        self._act = _PROJECTOR_ACTS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self._act(self.linear_1(x)))


def _vision_prefix(keys: list[str]) -> str:
    suffix = "embeddings.patch_embedding.weight"
    hits = [k[: -len(suffix)] for k in keys if k.endswith(suffix) and "vision_tower" in k]
    if len(hits) != 1:
        raise CheckpointError(
            f"cannot find the CLIP vision tower in the weights (found {len(hits)} '*vision_tower*.{suffix}' keys)"
        )
    return hits[0]


def _projector_prefix(keys: list[str]) -> str:
    hits = [k[: -len("linear_1.weight")] for k in keys if k.endswith("multi_modal_projector.linear_1.weight")]
    if len(hits) != 1:
        raise CheckpointError(
            "cannot find multi_modal_projector.linear_1.weight in the weights: not a LLaVA checkpoint"
        )
    return hits[0]


def _read_weights(root: Path, wanted: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors whose names contain any of `wanted`, from every safetensors file of the folder."""
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - installed with the clip extra
        from .errors import MissingDependencyError

        raise MissingDependencyError(
            "reading a LLaVA checkpoint needs safetensors: pip install 'visual-agent[clip]'"
        ) from exc
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{root} has no *.safetensors weights (only safetensors checkpoints are read)")
    out: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if any(w in key for w in wanted):
                    out[key] = f.get_tensor(key)
    return out


def load_weights(ckpt: LlavaCheckpoint, visual: nn.Module) -> LlavaProjector:
    """Copy the checkpoint's vision weights into `visual` (strictly) and return its projector, loaded."""
    state = _read_weights(ckpt.path, ("vision_tower", "multi_modal_projector"))
    keys = list(state)
    v = _vision_prefix(keys)
    p = _projector_prefix(keys)

    def take(name: str) -> torch.Tensor:
        try:
            return state[name]
        except KeyError:
            raise CheckpointError(f"the weights lack '{name}'") from None

    mapped: dict[str, torch.Tensor] = {
        "class_embedding": take(v + "embeddings.class_embedding"),
        "conv1.weight": take(v + "embeddings.patch_embedding.weight"),
        "positional_embedding": take(v + "embeddings.position_embedding.weight"),
        "ln_pre.weight": take(v + "pre_layrnorm.weight"),
        "ln_pre.bias": take(v + "pre_layrnorm.bias"),
        "ln_post.weight": take(v + "post_layernorm.weight"),
        "ln_post.bias": take(v + "post_layernorm.bias"),
        "proj": torch.eye(ckpt.vision.hidden_size),
    }
    for i in range(ckpt.vision.num_layers):
        hf, oc = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            mapped[oc + f"attn.in_proj_{part}"] = torch.cat(
                [take(hf + f"self_attn.{n}_proj.{part}") for n in ("q", "k", "v")]
            )
            mapped[oc + f"attn.out_proj.{part}"] = take(hf + f"self_attn.out_proj.{part}")
            mapped[oc + f"ln_1.{part}"] = take(hf + f"layer_norm1.{part}")
            mapped[oc + f"ln_2.{part}"] = take(hf + f"layer_norm2.{part}")
            mapped[oc + f"mlp.c_fc.{part}"] = take(hf + f"mlp.fc1.{part}")
            mapped[oc + f"mlp.c_proj.{part}"] = take(hf + f"mlp.fc2.{part}")
    try:
        visual.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the vision weights do not fit the tower described by config.json: {exc}") from exc

    w1 = take(p + "linear_1.weight")
    bias = (p + "linear_1.bias") in state
    expected_in = ckpt.vision.hidden_size * len(ckpt.feature_layers)
    if w1.shape != (ckpt.text_hidden_size, expected_in):
        raise CheckpointError(
            f"multi_modal_projector.linear_1.weight is {tuple(w1.shape)}, expected "
            f"({ckpt.text_hidden_size}, {expected_in}) from text hidden size and vision features"
        )
    projector = LlavaProjector(expected_in, ckpt.text_hidden_size, ckpt.projector_act, bias=bias)
    proj_state = {k[len(p):]: t for k, t in state.items() if k.startswith(p)}
    try:
        projector.load_state_dict(proj_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the projector weights do not match: {exc}") from exc
    return projector
