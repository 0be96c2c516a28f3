"""Image backbones as per-frame feature extractors, built by one factory for real and tiny sizes.

`build_backbone(model_cfg)` returns a `VideoBackbone`: the library's own module (open_clip
`VisionTransformer`, timm `VisionTransformer` / `SwinTransformer`) with the temporal operator
installed, so its state dict is a plain library checkpoint, and beside it (not set as
attributes on the library's module) what the video models need to know about it. Input:
frames ``(B*T, C, H, W)`` (Swin with a temporal patch size > 1: the clip ``(B, C, T, H, W)``);
output: one feature per frame.
Pretrained weights come from a library tag or a local file; nothing is downloaded in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zeroi2v.config import ModelConfig
from zeroi2v.models.clip_options import apply_clip_options
from zeroi2v.models.stdha import install_temporal_attention
from zeroi2v.specs import BACKBONES, BackboneSpec


@dataclass(frozen=True)
class VideoBackbone:
    """A built backbone (`module`) and the facts about it that the video models read.

    The facts are kept here rather than set as attributes on the third-party module (whose
    class does not declare them) or held by a wrapping `nn.Module`, which would add a level
    to every state-dict key: `module` goes into the model tree as is, as ``backbone``, so
    pretrained checkpoints load strictly and a merged model's keys are the library's.
    """

    module: nn.Module
    num_frames: int  # frames the attention sees (Swin: T / temporal_patch_size)
    feature_dim: int  # width of the per-frame feature
    temporal_patch_size: int = 1  # > 1: the module embeds whole clips (B, C, T, H, W)


def build_backbone(model_cfg: ModelConfig) -> VideoBackbone:
    """Backbone of `model_cfg.backbone` with `model_cfg.temporal_op` installed."""
    spec = BACKBONES[model_cfg.backbone]
    if spec.family == "swin":
        # lazy: timm and torchvision, for Swin only
        from zeroi2v.models.swin import build_swin_backbone

        kt = model_cfg.temporal_patch_size
        module = build_swin_backbone(spec, model_cfg)
        return VideoBackbone(module, model_cfg.num_frames // kt, feature_dim(module), kt)
    if spec.impl == "open_clip":
        module = apply_clip_options(_open_clip_vit(spec, model_cfg), model_cfg)
    else:
        module = _timm_vit(spec, model_cfg)
    install_temporal_attention(
        module,
        model_cfg.offsets,
        model_cfg.num_frames,
        model_cfg.temporal_op,
        model_cfg.shift_ratio,
        model_cfg.shift_fill,
    )
    return VideoBackbone(module, model_cfg.num_frames, feature_dim(module))


def feature_dim(backbone: nn.Module) -> int:
    """Width of the per-frame feature: CLIP's projected embedding, timm's pooled features."""
    output_dim = getattr(backbone, "output_dim", None)  # open_clip (after `proj`)
    return int(output_dim if output_dim is not None else backbone.num_features)


def token_layout(backbone: nn.Module) -> tuple[tuple[int, int], int] | None:
    """(patch grid (h, w), number of prefix tokens) of a ViT; None for Swin (windows)."""
    if hasattr(backbone, "class_embedding"):  # open_clip
        return tuple(backbone.grid_size), 1
    patch_embed = getattr(backbone, "patch_embed", None)
    if hasattr(backbone, "num_prefix_tokens") and patch_embed is not None:
        return tuple(patch_embed.grid_size), backbone.num_prefix_tokens
    return None


def _open_clip_vit(spec: BackboneSpec, model_cfg: Any) -> nn.Module:
    # lazy: open_clip is slow to import, CLIP only
    from open_clip.transformer import QuickGELU, VisionTransformer

    pretrained = model_cfg.pretrained
    if not spec.library_name:  # tiny: the same class, built directly
        visual = VisionTransformer(
            image_size=model_cfg.image_size,
            patch_size=spec.patch_size,
            width=spec.width,
            layers=spec.depths[0],
            heads=spec.heads[0],
            mlp_ratio=4.0,
            output_dim=spec.width,
            act_layer=QuickGELU if model_cfg.quick_gelu else nn.GELU,
        )
        if pretrained is not None:
            _load_local(visual, pretrained, model_cfg.backbone)
        return visual
    import open_clip  # lazy: open_clip is slow to import, CLIP only

    # OpenAI's CLIP weights were trained with QuickGELU; open_clip only warns on a mismatch.
    tag_cfg = open_clip.get_pretrained_cfg(spec.library_name, pretrained) if pretrained else {}
    quick_gelu = model_cfg.quick_gelu
    if quick_gelu is None:
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    try:
        model = open_clip.create_model(
            spec.library_name,
            pretrained=pretrained,
            force_image_size=model_cfg.image_size,
            force_quick_gelu=quick_gelu,
            require_pretrained=pretrained is not None,
            device=torch.get_default_device(),  # meta under `with torch.device("meta")` (profile)
        )
    except Exception as error:  # offline hub, unknown tag, bad file: one readable sentence
        raise _load_error(pretrained, model_cfg.backbone, error) from None
    return model.visual


def _timm_vit(spec: BackboneSpec, model_cfg: Any) -> nn.Module:
    # lazy: timm is slow to import, timm models only
    import timm
    from timm.models.vision_transformer import VisionTransformer

    pretrained = model_cfg.pretrained
    if not spec.library_name:
        vit = VisionTransformer(
            img_size=model_cfg.image_size,
            patch_size=spec.patch_size,
            embed_dim=spec.width,
            depth=spec.depths[0],
            num_heads=spec.heads[0],
            num_classes=0,
        )
        if pretrained is not None:
            _load_local(vit, pretrained, model_cfg.backbone)
        return vit
    kwargs: dict[str, Any] = dict(num_classes=0, img_size=model_cfg.image_size)
    name = spec.library_name
    if pretrained is not None and Path(pretrained).is_file():
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained))
    elif pretrained is not None:
        name = f"{name.split('.')[0]}.{pretrained}"
    try:
        return timm.create_model(name, pretrained=pretrained is not None, **kwargs)
    except Exception as error:
        raise _load_error(pretrained, model_cfg.backbone, error) from None


def _load_local(module: nn.Module, path: str, backbone: str) -> None:
    """Strict load of a state dict file (a whole VideoClassifier/CLIP one is narrowed down)."""
    if not Path(path).is_file():
        raise _load_error(path, backbone, FileNotFoundError("no such file"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        for prefix in ("backbone.", "visual."):
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
    except Exception as error:
        raise _load_error(path, backbone, error) from None


def _load_error(pretrained: Any, backbone: str, error: Exception) -> RuntimeError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RuntimeError(
        f"could not load pretrained weights '{pretrained}' for {backbone}: {reason[:300]} "
        "(give a library tag available offline or a local checkpoint file)"
    )
