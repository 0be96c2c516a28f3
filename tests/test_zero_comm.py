"""DeepSpeed sized for the trainable set (zeroi2v.engine.zero_comm): the chosen settings, and on
a real 2-rank ZeRO-1 bf16 engine (gloo, CPU) that master weights and optimizer state cover
exactly the trainable elements, frozen weights get no gradient, and the losses equal those of
DeepSpeed's own defaults."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import TINY_ENGINE_OVERRIDES, become_rank, end_rank, free_port, step_losses

from zeroi2v.engine import zero_comm

# configs/k400_b16_8f.json: 48 adapters × (2·768·192 + 192 + 768) + head 512·400 + 400
VIT_B16_TRAINABLE = 14_407_056


def _ds(stage: int = 1, world: int = 1, bf16: bool = True, **zero) -> dict:
    return {
        "train_batch_size": 8 * world,
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": bf16},
        "zero_optimization": {"stage": stage, **zero},
    }


@pytest.mark.parametrize(
    ("trainable", "bucket"),
    [(VIT_B16_TRAINABLE, VIT_B16_TRAINABLE // 4), (2_000_000, 2**20), (17_349, 17_350)],
)
def test_buckets_are_a_quarter_of_the_trainable_set_at_least_a_mebielement(trainable, bucket):
    assert zero_comm.bucket_size(trainable) == bucket


def test_fit_fills_only_what_the_config_leaves_unset():
    one = zero_comm.fit(_ds(world=1), VIT_B16_TRAINABLE)
    assert one["zero_optimization"] == {
        "stage": 1,
        "reduce_bucket_size": 3_601_764,
        "allgather_bucket_size": 3_601_764,
        "overlap_comm": False,  # one rank: nothing to overlap
    }
    assert one["bf16"] == {"enabled": True, "check_grad_overflow": False}
    two = zero_comm.fit(_ds(stage=2, world=2, reduce_bucket_size=10**6), VIT_B16_TRAINABLE)
    assert two["zero_optimization"]["reduce_bucket_size"] == 10**6  # explicit: kept
    assert two["zero_optimization"]["overlap_comm"] is True
    kept = zero_comm.fit(_ds(bf16=True) | {"bf16": {"enabled": True, "check_grad_overflow": 1}}, 9)
    assert kept["bf16"]["check_grad_overflow"] == 1
    # ZeRO 0 and 3 have other knobs; fp32 has no overflow test to drop
    assert zero_comm.fit(_ds(stage=0, bf16=False), 9) == _ds(stage=0, bf16=False)
    assert zero_comm.fit(_ds(stage=3, bf16=False), 9) == _ds(stage=3, bf16=False)

    # no clipping: ZeRO 1/2 need no gradient norm (3 host syncs a step), except bf16 ZeRO-1
    def norm(stage: int, bf16: bool, **clipping: float) -> bool | None:
        fitted = zero_comm.fit(_ds(stage=stage, bf16=bf16) | clipping, 9)
        return fitted["zero_optimization"].get("compute_grad_norm")

    assert norm(1, False, gradient_clipping=0.0) is norm(2, True, gradient_clipping=0) is False
    assert norm(1, True, gradient_clipping=0.0) is None  # DeepSpeed's bf16 ZeRO-1 refuses it
    assert norm(2, False) is None  # DeepSpeed clips at 1.0 by default


def _rank(rank: int, port: int, out: str) -> None:
    become_rank(rank, 2, port)
    from zeroi2v import config
    from zeroi2v.engine import parallel, trainer

    parallel.init_distributed()
    base = {
        **TINY_ENGINE_OVERRIDES,
        "deepspeed.zero_optimization.stage": 1,
        "deepspeed.bf16.enabled": True,
    }
    torch.manual_seed(rank)
    clips, labels = torch.randn(3, 2, 3, 4, 32, 32), torch.randint(0, 5, (3, 2))
    result = {}
    quarter = {  # the tiny model's 17,349 elements in 4 buckets, as ViT-B/16's 14 M get
        "deepspeed.zero_optimization.reduce_bucket_size": 4338,
        "deepspeed.zero_optimization.allgather_bucket_size": 4338,
    }
    runs = (("fitted", {}), ("defaults", zero_comm.DEEPSPEED_DEFAULTS), ("quarter", quarter))
    for name, extra in runs:
        cfg = config.from_dict({}, {**base, **extra})
        torch.manual_seed(0)
        model = trainer._build_model(cfg)
        engine = parallel.build_engine(model, cfg, parallel.deepspeed_config(cfg, 2), 100, 10)
        batches = [((c.bfloat16(),), y) for c, y in zip(clips, labels, strict=True)]
        losses = step_losses(engine, torch.nn.CrossEntropyLoss(), batches)
        opt = engine.optimizer
        frozen = [p for p in model.parameters() if not p.requires_grad]
        result[name] = {
            "losses": losses,
            "bucket": opt.reduce_bucket_size,
            "allgather": opt.allgather_bucket_size,
            "overlap": opt.overlap_comm,
            "fused_adamw": opt.optimizer.defaults["fused"],
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "frozen": sum(p.numel() for p in frozen),
            "master": sum(t.numel() for t in opt.single_partition_of_fp32_groups),
            "master_dtypes": sorted({str(t.dtype) for t in opt.single_partition_of_fp32_groups}),
            "adam_state": sum(
                s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in opt.optimizer.state.values()
            ),
            "frozen_grads": sum(p.grad is not None for p in frozen),
            "module_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
        }
        engine.destroy()
    with open(f"{out}.{rank}", "w") as handle:
        json.dump(result, handle)
    end_rank()


def test_two_rank_zero1_bf16_holds_only_trainable_state_and_keeps_the_losses(tmp_path):
    out = tmp_path / "rank"
    mp.spawn(_rank, args=(free_port(), str(out)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank.{r}").read_text()) for r in (0, 1)]
    fitted, defaults = ranks[0]["fitted"], ranks[0]["defaults"]
    trainable = fitted["trainable"]
    size = zero_comm.bucket_size(trainable)  # one bucket: fewer than 2^20 trainable elements
    assert (fitted["bucket"], fitted["allgather"], fitted["overlap"]) == (size, size, True)
    assert (defaults["bucket"], defaults["overlap"]) == (500_000_000, False)
    assert fitted["fused_adamw"] is True  # one pass over each flat fp32 partition
    for name in ("fitted", "defaults"):
        # fp32 master copies: ZeRO-1 splits the trainable elements over the 2 ranks (each
        # param group padded to a multiple of 2 ranks × alignment); frozen weights have none
        master = sum(r[name]["master"] for r in ranks)
        assert trainable <= master < trainable + 8, name
        assert sum(r[name]["adam_state"] for r in ranks) == 2 * master, name
        for rank in ranks:
            run = rank[name]
            assert run["frozen"] > 5 * trainable
            assert run["master_dtypes"] == ["torch.float32"]
            assert run["module_dtypes"] == ["torch.bfloat16"]  # frozen weights: bf16 only
            assert run["frozen_grads"] == 0
    assert (ranks[0]["quarter"]["bucket"], ranks[0]["quarter"]["overlap"]) == (4338, True)
    for rank in ranks:
        assert rank["fitted"]["losses"] == rank["defaults"]["losses"]
        assert rank["quarter"]["losses"] == rank["defaults"]["losses"]
