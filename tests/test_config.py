"""Config: layering, strictness and the cross-field checks that name the bad field."""

import json

import pytest

from zeroi2v import config, offsets
from zeroi2v.config import ConfigError
from zeroi2v.specs import BACKBONES


def test_layering_defaults_file_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"optim": {"lr": 1e-3, "weight_decay": 0.1}}))
    cfg = config.load(path, ["--optim.lr=5e-4", "train.epochs=3", "model.dropout=0.5"])
    assert cfg.optim.lr == 5e-4  # override beats file
    assert cfg.optim.weight_decay == 0.1  # file beats default
    assert cfg.optim.label_smoothing == 0.0  # default kept
    assert (cfg.train.epochs, cfg.model.dropout) == (3, 0.5)


def test_round_trip_and_flatten_use_the_override_keys():
    cfg = config.load(
        None, {"model.head_offsets": [[2, 1], [0, 3]], "deepspeed.zero_optimization.stage": 2}
    )
    again = config.from_dict(config.to_dict(cfg))
    assert again == cfg
    flat = config.flatten(cfg)
    assert flat["deepspeed.zero_optimization.stage"] == 2
    assert config.from_dict({}, flat) == cfg  # flattened params are valid overrides


def test_head_offsets_are_parsed_once_into_a_typed_value_and_keep_their_spelling(monkeypatch):
    """`cfg.model.offsets` is the resolved per-block value every model builder reads; the JSON
    key keeps what the user wrote, so a dumped config reloads to the same config."""
    from zeroi2v import build_model

    cfg = config.load(None, {"model.head_offsets": "{1·1, −1·1, 0·2}", "model.num_frames": 4})
    assert cfg.model.offsets == offsets.HeadOffsets(((1, -1, 0, 0), (1, -1, 0, 0)), frames=4)
    assert config.to_dict(cfg)["model"]["head_offsets"] == "{1·1, −1·1, 0·2}"
    assert config.from_dict(config.to_dict(cfg)) == cfg
    assert config.load(None, {"model.temporal_op": "kv_shift"}).model.offsets is None

    swin = {"backbone": "tiny_swin", "head_offsets": [[[1, 1], [0, 1]], [[1, 1], [0, 3]]]}
    built = [cfg, *(config.from_dict({"model": m}) for m in ({"backbone": "tiny_vit_timm"}, swin))]

    def parse_again(spec):
        raise AssertionError(f"model.head_offsets {spec!r} parsed again after validation")

    monkeypatch.setattr(offsets, "parse_multiset", parse_again)
    for each in built:
        build_model(each)


def test_a_model_section_changed_after_validation_is_unresolved_until_validated_again():
    cfg = config.load(None, {"model.num_frames": 4})
    cfg.model.num_frames = 8
    with pytest.raises(ConfigError, match="resolved when the whole config is validated"):
        cfg.model.offsets  # noqa: B018
    cfg.model = cfg.model  # validating the whole config again resolves it for 8 frames
    assert cfg.model.offsets.frames == 8
    with pytest.raises(ConfigError, match="not a model section alone"):
        config.ModelConfig().offsets  # noqa: B018


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim.lrr=1"], "optim.lrr: unknown key; valid keys: betas, label_smoothing, lr"),
        (["modle.backbone=x"], "modle: unknown key; valid keys: _comment, adapt, data"),
        (["model.backbone=resnet"], "model.backbone: unknown backbone 'resnet'"),
        (["model.head_offsets=[[1,1],[0,2]]"], "head counts sum to 3, the block has 4 heads"),
        (["model.head_offsets=[[8,1],[0,3]]"], "|Δt| must be < 8 frames"),
        (["adapt.strategy=adapterz"], "adapt.strategy: Input should be 'zeroi2v'"),
        (["deepspeed.train_batch_size=12"], "deepspeed.train_batch_size (12) must be a multiple"),
        (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
        (
            ["model.num_frames=6", "model.temporal_patch_size=4"],
            "model.num_frames (6) must be a multiple",
        ),
    ],
)
def test_bad_config_names_the_field(overrides, expected):
    with pytest.raises(ConfigError) as error:
        config.load(None, overrides)
    assert expected in str(error.value)


def test_batch_identity_with_world_size():
    ds = {
        "train_batch_size": 32,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
    }
    config.check_batch_sizes(ds, world_size=4)
    with pytest.raises(ConfigError, match=r"× world size \(2\); to keep the global batch, "):
        config.check_batch_sizes(ds, world_size=2)
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=8$"):  # the override
        config.check_batch_sizes(ds, world_size=1)
    with pytest.raises(ConfigError, match=r"× world size \(3\)$"):  # 32 is no multiple of 4 × 3
        config.check_batch_sizes(ds, world_size=3)


def test_paper_notation_equals_json_pairs():
    assert offsets.parse_multiset("{1·2, −1·2, 2·1, 0·11}") == [(1, 2), (-1, 2), (2, 1), (0, 11)]
    assert offsets.parse_multiset([[1, 2], [-1, 2], [2, 1], [0, 11]]) == [
        (1, 2),
        (-1, 2),
        (2, 1),
        (0, 11),
    ]
    assert offsets.expand([(1, 1), (-1, 1), (0, 2)]) == [1, -1, 0, 0]


@pytest.mark.parametrize(
    ("multiset", "rf"),
    [
        ("{1·1, −1·1, 0·10}", 3),
        ("{1·1, −1·1, 2·1, 0·9}", 4),
        ("{1·2, −1·2, 2·2, −2·2, 0·8}", 5),
        ("{1·1, −1·1, 2·1, −2·1, 3·1, 0·7}", 6),
        ("{1·1, 0·3}", 2),
        ("{0·12}", 1),
    ],
)
def test_receptive_field_matches_paper_table_11(multiset, rf):
    assert offsets.receptive_field(offsets.expand(offsets.parse_multiset(multiset))) == rf


def test_offsets_per_stage_for_swin():
    swin = BACKBONES["swin_b"]
    stages = [
        "{1·1, 0·3}",
        "{1·1, −1·1, 0·6}",
        "{1·1, −1·1, 2·1, −2·1, 0·12}",
        "{1·2, −1·2, 2·2, −2·2, 0·24}",
    ]
    per_block = offsets.offsets_per_block(stages, swin, frames=16)
    assert [len(b) for b in per_block] == swin.heads_per_block()
    assert per_block[2] == [1, -1, 0, 0, 0, 0, 0, 0]  # first block of stage 2
    assert per_block[-1][:8] == [1, 1, -1, -1, 2, 2, -2, -2]


def test_offsets_per_block_list_must_match_depth():
    tiny = BACKBONES["tiny_vit"]
    per_block = offsets.offsets_per_block([[[1, 1], [0, 3]], [[-1, 2], [0, 2]]], tiny, frames=4)
    assert per_block == [[1, 0, 0, 0], [-1, -1, 0, 0]]
    with pytest.raises(ConfigError, match="one per block \\(2\\) or one per stage \\(1\\)"):
        offsets.offsets_per_block([[[0, 4]]] * 3, tiny, frames=4)


def test_overrides_come_from_anywhere_on_the_line_in_their_order():
    """Every launch script parses its line so: the dotted overrides, in line order (a later one
    wins), also right after an option of several values; then what argparse leaves over."""
    import argparse

    from zeroi2v.config import parse_args_with_overrides

    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("overrides", nargs="*")
    line = ["typo=1", "--seeds", "0", "1", "--optim.lr=1", "train.epochs=2", "--unknown"]
    args, overrides = parse_args_with_overrides(parser, [*line, "optim.lr=2"])
    assert args.seeds == [0, 1]
    assert overrides == ["--optim.lr=1", "train.epochs=2", "optim.lr=2", "typo=1", "--unknown"]
