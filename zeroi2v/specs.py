"""Architecture facts of the supported image backbones.

Kept free of torch so that the config can validate head offsets (which need the number of
heads and blocks) without building a model.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the code needs to know about a backbone before building it."""

    family: str  # "vit" or "swin"
    impl: str  # "open_clip" or "timm"
    library_name: str  # name given to the library's model factory ("" = built locally)
    width: int  # embedding width (Swin: of the first stage)
    depths: tuple[int, ...]  # blocks per stage (ViT: one stage)
    heads: tuple[int, ...]  # attention heads per stage
    patch_size: int
    image_size: int
    window_size: int = 0  # Swin only
    # Pixel normalisation the pretrained weights expect (CLIP's, ImageNet's or 0.5).
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @property
    def num_blocks(self) -> int:
        return sum(self.depths)

    def heads_per_block(self) -> list[int]:
        """Number of attention heads of every block, in forward order."""
        return [h for depth, h in zip(self.depths, self.heads, strict=True) for _ in range(depth)]

    def stage_of_block(self) -> list[int]:
        """Stage index of every block, in forward order."""
        return [s for s, depth in enumerate(self.depths) for _ in range(depth)]


BACKBONES: dict[str, BackboneSpec] = {
    "clip_vit_b16": BackboneSpec("vit", "open_clip", "ViT-B-16", 768, (12,), (12,), 16, 224),
    "clip_vit_l14": BackboneSpec("vit", "open_clip", "ViT-L-14", 1024, (24,), (16,), 14, 224),
    "vit_b16_in21k": BackboneSpec(
        "vit",
        "timm",
        "vit_base_patch16_224.augreg_in21k",
        768,
        (12,),
        (12,),
        16,
        224,
        mean=HALF,
        std=HALF,
    ),
    "swin_b": BackboneSpec(
        "swin",
        "timm",
        "swin_base_patch4_window7_224",
        128,
        (2, 2, 18, 2),
        (4, 8, 16, 32),
        4,
        224,
        7,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    # Tiny variants: same factories, sizes small enough for CPU tests and the demo.
    "tiny_vit": BackboneSpec("vit", "open_clip", "", 64, (2,), (4,), 8, 32),
    # 12 heads of 12 channels: R_c = 1/6 is 2 whole heads or 2 of each head's 12 channels
    "tiny_vit12": BackboneSpec("vit", "open_clip", "", 144, (2,), (12,), 8, 32),
    "tiny_vit_timm": BackboneSpec("vit", "timm", "", 64, (2,), (4,), 8, 32, mean=HALF, std=HALF),
    "tiny_swin": BackboneSpec(
        "swin", "timm", "", 32, (2, 2), (2, 4), 4, 32, 4, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
}
