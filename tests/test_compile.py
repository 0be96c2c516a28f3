"""Speed without changing results: STDHA's cost per block, compilation, selective checkpointing.

- The merged model dispatches at most 2 more operators per block than the plain one (eager
  inference: one gather + one scatter of the temporal heads' K/V), views excluded.
- ViT and Swin, merged and unmerged, eval and training, trace with 0 graph breaks; compiled
  outputs and gradients equal eager (fp32 tolerance); DeepSpeed's `engine.compile()` gives
  the eager losses under ZeRO 0-3 with activation checkpointing (slow).
- Compiled, the merged model launches at most one more kernel per block than the plain one.
- Checkpointing every k-th block gives exactly the outputs and gradients of no checkpointing.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import torch.multiprocessing as mp
from engine_helpers import TINY_ENGINE_OVERRIDES, clean_env, end_rank, free_port, step_losses
from torch.utils._python_dispatch import TorchDispatchMode

from zeroi2v import build_model, merge
from zeroi2v.config import from_dict
from zeroi2v.engine.activation_checkpointing import apply_activation_checkpointing
from zeroi2v.models.adapters import transformer_blocks

SWIN_OFFSETS = [[[1, 1], [0, 1]], [[1, 1], [-1, 1], [0, 2]]]  # per stage (2 and 4 heads)
SWIN_SPATIAL = [[[0, 2]], [[0, 4]]]


@pytest.fixture(autouse=True)
def _no_cache_warning(recwarn):
    """Compiling our models gives no dynamo warning about tracing through an lru_cache."""
    yield
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]


def _cfg(backbone: str, temporal_op: str = "stdha", strategy: str = "zeroi2v", offsets=None):
    model = {"backbone": backbone, "image_size": 32, "num_frames": 4, "num_classes": 5}
    model.update(temporal_op=temporal_op)
    if offsets is not None:
        model.update(head_offsets=offsets)
    elif backbone == "tiny_swin":
        model.update(head_offsets=SWIN_OFFSETS)
    return from_dict({"model": model, "adapt": {"strategy": strategy}})


def _models(backbone: str) -> dict[str, torch.nn.Module]:
    """plain (no temporal op, no adapters; Swin: STDHA, all heads spatial), unmerged, merged."""
    torch.manual_seed(0)
    if backbone == "tiny_swin":  # temporal_op none is timm's own attention, a different kernel
        plain = build_model(_cfg(backbone, strategy="linear_probe", offsets=SWIN_SPATIAL))
    else:
        plain = build_model(_cfg(backbone, "none", "linear_probe"))
    torch.manual_seed(0)
    unmerged = build_model(_cfg(backbone))
    for p in unmerged.parameters():  # adapters start as the identity: make them count
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return {"plain": plain.eval(), "unmerged": unmerged.eval(), "merged": merge(unmerged).eval()}


class _CountOps(TorchDispatchMode):
    """Operators reaching the kernels, views excluded (they move no data)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def _ops_per_forward(model: torch.nn.Module, clip: torch.Tensor) -> int:
    with torch.inference_mode():
        model(clip)  # first call builds cached index tensors
        with _CountOps() as counter:
            model(clip)
    return counter.count


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_vit_timm", "tiny_swin"])
def test_merged_model_dispatches_at_most_two_more_ops_per_block(backbone):
    models = _models(backbone)
    clip = torch.randn(2, 3, 4, 32, 32)
    blocks = len(transformer_blocks(models["merged"]))
    plain, merged = (_ops_per_forward(models[k], clip) for k in ("plain", "merged"))
    assert plain < merged <= plain + 2 * blocks, (plain, merged, blocks)


@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_swin"])
def test_no_graph_breaks_merged_unmerged_and_training(backbone):
    models = _models(backbone)
    clip = torch.randn(1, 3, 4, 32, 32)
    for name in ("unmerged", "merged"):
        with torch.no_grad():
            explained = torch._dynamo.explain(models[name])(clip)
        assert explained.graph_break_count == 0, (name, explained.break_reasons)
        assert explained.graph_count == 1
    train = models["unmerged"].train()  # autograd path: forward with grads recorded
    explained = torch._dynamo.explain(train)(clip)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


def _loss_and_grads(model: torch.nn.Module, clip: torch.Tensor, labels: torch.Tensor):
    loss = torch.nn.functional.cross_entropy(model(clip), labels)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize(
    "backbone", ["tiny_vit", pytest.param("tiny_swin", marks=pytest.mark.slow)]
)
def test_compiled_forward_and_gradients_equal_eager(backbone):
    """aot_eager: the compiled graphs (forward and the joint backward) run op by op."""
    models = _models(backbone)
    clip, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([1, 3])
    compiled = copy.deepcopy(models["unmerged"]).train()
    compiled.compile(backend="aot_eager", fullgraph=True)
    want_loss, want_grads = _loss_and_grads(models["unmerged"].train(), clip, labels)
    got_loss, got_grads = _loss_and_grads(compiled, clip, labels)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    merged = copy.deepcopy(models["merged"])
    merged.compile(backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        torch.testing.assert_close(merged(clip), models["merged"](clip), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def _kernel_launches(model: torch.nn.Module, clip: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Kernels launched by inductor's generated `call` (fused C++ kernels + extern calls)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    compiled = copy.deepcopy(model)
    compiled.compile(fullgraph=True)
    with torch.inference_mode():
        out, codes = run_and_get_code(compiled, clip)
    body = "".join(code.split("def call(", 1)[1] for code in codes)
    launch = r"^\s+(?:cpp_fused_\w+|extern_kernels\.\w+|torch\.ops\.[\w.]+)\("
    launches = re.findall(launch, body, re.M)
    return len(launches), out


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["tiny_vit", "tiny_swin"])
def test_inductor_merged_launches_at_most_one_more_kernel_per_block(backbone):
    """Inductor on CPU (C++ kernels); outputs equal eager in fp32."""
    import torch._inductor.config as inductor_config

    models = _models(backbone)
    clip = torch.randn(2, 3, 4, 32, 32)
    blocks = len(transformer_blocks(models["merged"]))
    with inductor_config.patch(force_disable_caches=True):
        plain, plain_out = _kernel_launches(models["plain"], clip)
        merged, merged_out = _kernel_launches(models["merged"], clip)
    assert merged <= plain + blocks, (plain, merged, blocks)
    with torch.inference_mode():
        torch.testing.assert_close(merged_out, models["merged"](clip), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain_out, models["plain"](clip), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("backbone", "every"), [("tiny_vit", 1), ("tiny_vit", 2), ("tiny_swin", 3)]
)
def test_selective_checkpointing_matches_no_checkpointing_exactly(backbone, every):
    model = _models(backbone)["unmerged"].train()
    checkpointed = copy.deepcopy(model)
    blocks = transformer_blocks(model)
    assert apply_activation_checkpointing(checkpointed, every) == len(blocks[::every])
    clip, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 4])
    want_loss, want_grads = _loss_and_grads(model, clip, labels)
    got_loss, got_grads = _loss_and_grads(checkpointed, clip, labels)
    assert torch.equal(got_loss, want_loss)
    assert all(torch.equal(g, w) for g, w in zip(got_grads, want_grads, strict=True))


def _engine_worker(rank: int, port: int, result_file: str) -> None:
    import os

    os.environ.update(clean_env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1"))
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    from zeroi2v import config
    from zeroi2v.engine import parallel, trainer

    parallel.init_distributed()
    base = TINY_ENGINE_OVERRIDES
    torch.manual_seed(0)
    clips, labels = torch.randn(3, 2, 3, 4, 32, 32), torch.randint(0, 5, (3, 2))
    results = {}
    for stage, checkpointing, compiled in [(0, False, False), (0, False, True), (3, True, True)]:
        cfg = config.from_dict(
            {},
            {
                **base,
                "deepspeed.zero_optimization.stage": stage,
                "train.activation_checkpointing": checkpointing,
                "train.compile": compiled,
            },
        )
        torch.manual_seed(0)
        engine = parallel.build_engine(
            trainer._build_model(cfg), cfg, parallel.deepspeed_config(cfg, 1), 100, 10
        )
        results[f"{stage},{checkpointing},{compiled}"] = {
            "compiled": engine.is_compiled,
            "losses": step_losses(
                engine,
                torch.nn.CrossEntropyLoss(),
                [((c,), y) for c, y in zip(clips, labels, strict=True)],
            ),
            "keys": sorted(engine.module.state_dict())[:3],
        }
        engine.destroy()
        torch._dynamo.reset()
    with open(result_file, "w") as handle:
        json.dump(results, handle)
    end_rank()


@pytest.mark.slow
def test_train_compile_under_deepspeed_gives_the_eager_losses(tmp_path):
    """train.compile = engine.compile() (inductor): ZeRO 0 and ZeRO 3 + checkpointing."""
    result_file = tmp_path / "losses.json"
    mp.spawn(_engine_worker, args=(free_port(), str(result_file)), nprocs=1)
    runs = json.loads(result_file.read_text())
    eager = runs.pop("0,False,False")
    assert not eager["compiled"]
    for name, run in runs.items():
        assert run["compiled"], name
        assert run["keys"] == eager["keys"], name  # no `_orig_mod.` prefix in checkpoints
        assert run["losses"] == pytest.approx(eager["losses"], rel=1e-5, abs=1e-6), name
