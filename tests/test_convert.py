"""Official (MCG-NJU/ZeroI2V) checkpoints: converted, they give the official model's logits.

`_official_logits` is a direct implementation of the released layout (ViT_Zero_CLIP + I3D
head, mmaction key names, its channel-shift STDHA and adapter formula) written from its
description, at small sizes; a random state dict in that layout is the "checkpoint".
"""

from __future__ import annotations

import datetime
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zeroi2v import merge
from zeroi2v.config import ConfigError, from_dict
from zeroi2v.models.convert import (
    OFFICIAL_RECIPE,
    head_permutation,
    load_official,
    official_head_offsets,
)

WIDTH, HEADS, LAYERS, PATCH, SIZE, FRAMES, CLASSES = 64, 4, 2, 8, 32, 4, 5
SHIFT_DIV = 4  # 64 / 4 = 16 channels = one head reads t−1, the next t+1
SCALE = 0.5
ADAPTERS = ("T_Adapter_in", "S_Adapter", "MLP_Adapter", "MLP_Adapter_out")


def _official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.1, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    state = {
        "backbone.conv1.weight": rnd(WIDTH, 3, PATCH, PATCH, std=0.05),
        "backbone.class_embedding": rnd(WIDTH),
        "backbone.positional_embedding": rnd((SIZE // PATCH) ** 2 + 1, WIDTH),
        "backbone.temporal_embedding": rnd(1, FRAMES, WIDTH),
        "backbone.ln_pre.weight": rnd(WIDTH, mean=1.0),
        "backbone.ln_pre.bias": rnd(WIDTH),
        "backbone.ln_post.weight": rnd(WIDTH, mean=1.0),
        "backbone.ln_post.bias": rnd(WIDTH),
        "cls_head.fc_cls.weight": rnd(CLASSES, WIDTH),
        "cls_head.fc_cls.bias": rnd(CLASSES),
    }
    for i in range(LAYERS):
        p = f"backbone.transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            state[f"{p}{ln}.weight"], state[f"{p}{ln}.bias"] = rnd(WIDTH, mean=1.0), rnd(WIDTH)
        state[f"{p}attn.in_proj_weight"] = rnd(3 * WIDTH, WIDTH)
        state[f"{p}attn.in_proj_bias"] = rnd(3 * WIDTH)
        state[f"{p}attn.out_proj.weight"] = rnd(WIDTH, WIDTH)
        state[f"{p}attn.out_proj.bias"] = rnd(WIDTH)
        state[f"{p}mlp.c_fc.weight"], state[f"{p}mlp.c_fc.bias"] = (
            rnd(4 * WIDTH, WIDTH),
            rnd(4 * WIDTH),
        )
        state[f"{p}mlp.c_proj.weight"] = rnd(WIDTH, 4 * WIDTH)
        state[f"{p}mlp.c_proj.bias"] = rnd(WIDTH)
        for name in ADAPTERS:  # D_fc2 non-zero: trained, not the identity init
            state[f"{p}{name}.D_fc1.weight"] = rnd(WIDTH // 4, WIDTH)
            state[f"{p}{name}.D_fc1.bias"] = rnd(WIDTH // 4)
            state[f"{p}{name}.D_fc2.weight"] = rnd(WIDTH, WIDTH // 4)
            state[f"{p}{name}.D_fc2.bias"] = rnd(WIDTH)
    return state


def _official_logits(s: dict[str, torch.Tensor], clip: torch.Tensor) -> torch.Tensor:
    """ViT_Zero_CLIP forward + I3D head (eval: no dropout), token-major as batch-first."""
    B, T = clip.shape[0], clip.shape[2]

    def ln(x, name):
        return F.layer_norm(x, (WIDTH,), s[f"{name}.weight"], s[f"{name}.bias"])

    def linear(x, name):
        return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    def adapter(x, name):  # LinearAdapter: x + scale · D_fc2(dropout(D_fc1(x)))
        return x + SCALE * linear(linear(x, f"{name}.D_fc1"), f"{name}.D_fc2")

    def channel_shift(x):  # TemporalShift, divide_head=False: clone, then move two folds
        feat = x.unflatten(0, (B, T))
        out, fold = feat.clone(), WIDTH // SHIFT_DIV
        out[:, 1:, ..., :fold] = feat[:, :-1, ..., :fold]  # frame t reads t−1
        out[:, :-1, ..., fold : 2 * fold] = feat[:, 1:, ..., fold : 2 * fold]  # t reads t+1
        return out.flatten(0, 1)

    x = F.conv2d(clip.transpose(1, 2).flatten(0, 1), s["backbone.conv1.weight"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)  # (BT, HW, D)
    cls = s["backbone.class_embedding"].expand(x.shape[0], 1, WIDTH)
    x = torch.cat([cls, x], 1) + s["backbone.positional_embedding"]
    x = (x.unflatten(0, (B, T)) + s["backbone.temporal_embedding"][:, :, None]).flatten(0, 1)
    x = ln(x, "backbone.ln_pre")
    for i in range(LAYERS):
        p = f"backbone.transformer.resblocks.{i}."
        h = adapter(ln(x, f"{p}ln_1"), f"{p}T_Adapter_in")
        qkv = h @ s[f"{p}attn.in_proj_weight"].T + s[f"{p}attn.in_proj_bias"]
        q, k, v = qkv.chunk(3, dim=-1)
        k, v = channel_shift(k), channel_shift(v)
        q, k, v = (t.unflatten(-1, (HEADS, WIDTH // HEADS)).transpose(1, 2) for t in (q, k, v))
        att = ((q @ k.transpose(-1, -2)) / (WIDTH // HEADS) ** 0.5).softmax(-1) @ v
        att = linear(att.transpose(1, 2).flatten(2), f"{p}attn.out_proj")
        x = x + adapter(att, f"{p}S_Adapter")
        h = linear(adapter(ln(x, f"{p}ln_2"), f"{p}MLP_Adapter"), f"{p}mlp.c_fc")
        h = linear(h * torch.sigmoid(1.702 * h), f"{p}mlp.c_proj")  # QuickGELU
        x = x + adapter(h, f"{p}MLP_Adapter_out")
    feature = ln(x[:, 0], "backbone.ln_post").unflatten(0, (B, T)).mean(1)  # I3D avg pool
    return linear(feature, "cls_head.fc_cls")


def _cfg():
    raw = {
        "model": {
            "backbone": "tiny_vit",
            "image_size": SIZE,
            "num_frames": FRAMES,
            "num_classes": CLASSES,
            "head_offsets": "{1·1, -1·1, 0·2}",  # our order: head 0 reads t+1
        }
    }
    return from_dict(raw, {**OFFICIAL_RECIPE, "adapt.adapter_scale": SCALE})


def test_converted_official_checkpoint_gives_the_official_logits_before_and_after_merge():
    state = _official_state()
    official = official_head_offsets(WIDTH, HEADS, SHIFT_DIV)
    assert official == [-1, 1, 0, 0]
    model = load_official(state, _cfg(), official)
    clip = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = _official_logits(state, clip)
        assert (model(clip) - want).abs().max() < 1e-5
        assert (merge(model).eval()(clip) - want).abs().max() < 1e-5
        # without the head permutation the heads would read the wrong frames
        wrong = load_official(state, _cfg(), [1, -1, 0, 0])
        assert (wrong(clip) - want).abs().max() > 1e-3


def test_checkpoint_without_mlp_adapter_out_keeps_an_identity_adapter():
    state = {k: v for k, v in _official_state().items() if "MLP_Adapter_out" not in k}
    model = load_official(state, _cfg(), [-1, 1, 0, 0])
    ups = [v for k, v in model.state_dict().items() if "c_proj.adaptation.post.up" in k]
    assert ups and all(not u.any() for u in ups)


def test_official_offsets_and_mismatches_fail_in_one_sentence():
    # ViT-L/14 32 frames: shift_div 8 → 128 channels = 2 heads each way; long: 2 heads t−2
    assert (
        official_head_offsets(1024, 16, 8, long_shift_div=8)
        == [-1] * 2 + [1] * 2 + [-2] * 2 + [0] * 10
    )
    assert head_permutation([-1, 1, 0, 0], [1, -1, 0, 0]) == [1, 0, 2, 3]
    with pytest.raises(ConfigError, match="not a whole number of heads"):
        official_head_offsets(768, 12, 16)
    with pytest.raises(ConfigError, match="not a reordering of model.head_offsets"):
        head_permutation([-1, 1, 0, 0], [1, 1, 0, 0])
    state = _official_state()
    state["backbone.proj"] = torch.zeros(WIDTH, WIDTH)
    with pytest.raises(ConfigError, match="no place in this model: \\['backbone.proj'\\]"):
        load_official(state, _cfg(), [-1, 1, 0, 0])


def test_convert_cli_saves_a_merged_model_that_loads_back(tmp_path):
    import json

    from launch.convert import main
    from zeroi2v.engine.release import load_checkpoint_model

    state = _official_state(seed=3)
    meta = {"epoch": 1, "hook_msgs": {"best_score": np.float64(0.73), "last": np.arange(2)}}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "official.pth")  # mmaction's meta
    config = tmp_path / "ours.json"
    config.write_text(json.dumps({"model": _cfg().model.model_dump(mode="json")}))
    out = tmp_path / "merged.pt"
    result = main(
        ["--checkpoint", str(tmp_path / "official.pth"), "--config", str(config)]
        + ["--out", str(out), "--shift-div", str(SHIFT_DIV), "--adapter-scale", str(SCALE)]
    )
    assert result["offsets"] == [-1, 1, 0, 0]
    model, cfg = load_checkpoint_model(out)
    assert (cfg.adapt.adapter_scale, cfg.model.temporal_embedding) == (SCALE, True)
    assert not any("adaptation" in k for k in model.state_dict())
    clip = torch.randn(1, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert (model(clip) - _official_logits(state, clip)).abs().max() < 1e-5


def test_a_file_that_is_no_official_checkpoint_is_one_sentence(tmp_path):
    from zeroi2v.models.convert import read_official

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="notes.pth cannot be read: it is not a file torch.save"):
        read_official(tmp_path / "notes.pth")
    torch.save({"state_dict": {}, "meta": {"when": datetime.date(2024, 1, 1)}}, tmp_path / "d.pth")
    with pytest.raises(ConfigError, match="it holds datetime.date, which torch.load"):
        read_official(tmp_path / "d.pth")


class _NumpyOnePickler(pickle._Pickler):
    """Names numpy's functions as numpy 1 did (``numpy.core.multiarray``), as the released
    checkpoints, written before numpy 2, do."""

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if not module.startswith("numpy._core"):
            return super().save_global(obj, name)
        old = module.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{old}\n{obj.__name__}\n".encode())
        self.memoize(obj)


def _save_mmengine_training_checkpoint(path, state, monkeypatch) -> None:
    """What mmengine's CheckpointHook saves, as numpy 1 wrote it: the state dict, `meta`, an
    optimizer and the `message_hub`, whose logged scalars are `HistoryBuffer`s of numpy arrays.
    mmengine is not installed: a stand-in module is there while the file is written only."""

    class HistoryBuffer:
        def __init__(self, values):
            self._log_history = np.array(values)
            self._count_history = np.ones(len(values), dtype=np.int64)
            self.max_length = 1000000

    module = "mmengine.logging.history_buffer"
    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module, "HistoryBuffer"
    checkpoint = {
        "meta": {"epoch": 30, "iter": 1234, "seed": 0, "mmengine_version": "0.10.3"},
        "state_dict": state,
        "message_hub": {
            "log_scalars": {"train/loss": HistoryBuffer([0.9, 0.8])},
            "runtime_info": {"epoch": 30, "best_score": np.float64(0.73)},
        },
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
    }
    with monkeypatch.context() as patch:
        for name in ("mmengine", "mmengine.logging", module):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        patch.setattr(sys.modules[module], "HistoryBuffer", HistoryBuffer, raising=False)
        numpy_1 = types.ModuleType("numpy_1_pickle")
        numpy_1.Pickler = _NumpyOnePickler
        torch.save(checkpoint, path, pickle_module=numpy_1)


def test_an_mmengine_training_checkpoint_from_numpy_1_is_read(tmp_path, monkeypatch, caplog):
    """The released files are mmengine training checkpoints written under numpy 1: the
    mmengine objects are read as inert stand-ins (mmengine is neither imported nor needed),
    the numpy ones under their old names, and the state dict comes back exactly."""
    from zeroi2v.models.convert import read_official

    state = _official_state(seed=4)
    path = tmp_path / "best_acc_top1_epoch_30.pth"
    _save_mmengine_training_checkpoint(path, state, monkeypatch)
    raw = path.read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"mmengine.logging" in raw
    assert "mmengine" not in sys.modules
    with caplog.at_level("INFO", logger="zeroi2v.models.convert"):
        read = read_official(path)
    assert "mmengine" not in sys.modules
    assert "holds mmengine.logging.history_buffer.HistoryBuffer, read as inert" in caplog.text
    assert read.keys() == state.keys()
    assert all(torch.equal(read[key], value) for key, value in state.items())


def test_an_official_state_dict_entry_that_is_no_tensor_is_refused(tmp_path):
    """Anything but a tensor where a weight should be (a stand-in, a string) is one sentence
    naming the entry."""
    from zeroi2v.models.convert import read_official

    torch.save(
        {"state_dict": {"backbone.x": torch.zeros(1), "backbone.y": "text"}}, tmp_path / "s.pth"
    )
    with pytest.raises(ConfigError, match=r"entries that are not tensors: \['backbone.y'\]"):
        read_official(tmp_path / "s.pth")
