"""Everything DeepSpeed: process group, engine config, optimizer, schedule, checkpoint files.

This is the only module that imports deepspeed. The model stays a plain `nn.Module`; the
engine here wraps it (ZeRO stage, precision, clipping, accumulation come from the native
`deepspeed` section of our config), and the trainer only calls `engine(x)`,
`engine.backward(loss)`, `engine.step()` and the checkpoint helpers below.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zeroi2v.config import Config, ConfigError, check_batch_sizes
from zeroi2v.engine import frozen, zero_comm
from zeroi2v.engine.ckpt_integrity import CheckpointDamagedError, problem

log = logging.getLogger(__name__)

# Keys of the `deepspeed` section that would fight with what we build from `optim`.
_FORBIDDEN_DS_KEYS = {
    "optimizer": "optim (AdamW with decay/no-decay param groups is built from it)",
    "scheduler": "optim.warmup_epochs / optim.min_lr (warmup + cosine by steps)",
}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int


def select_accelerator() -> str:
    """Pick DeepSpeed's accelerator before deepspeed is imported (it reads DS_ACCELERATOR once)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
        log.info("No CUDA device found: using DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu).")
    return os.environ.get("DS_ACCELERATOR", "cuda")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def world_size_from_env() -> int:
    """World size as the launcher (deepspeed, torchrun) announces it; 1 for plain `python`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(timeout_s: float = 1800.0) -> DistInfo:
    """Join (or, for plain `python`, create) the process group.

    Without launcher variables DeepSpeed would try MPI discovery; a one-process run sets the
    env:// variables itself instead, so `python launch/train.py` and `deepspeed launch/train.py`
    share one code path. A collective that makes no progress for `timeout_s` (a lost node)
    fails instead of waiting forever.
    """
    accelerator = select_accelerator()
    import deepspeed  # lazy: DeepSpeed ([train] extra)

    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        from deepspeed.accelerator import get_accelerator  # lazy: DeepSpeed ([train] extra)

        backend = get_accelerator().communication_backend_name()
        deepspeed.init_distributed(
            dist_backend=backend, verbose=False, timeout=timedelta(seconds=timeout_s)
        )
        if accelerator == "cpu":  # only DeepSpeed's CPU accelerator has the shm op
            _unlink_shm_allreduce_buffer()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks on one machine share its cores; each taking all of them oversubscribes
        # the machine several times over (measured: 1.5 s/step instead of 0.15 s on 2 cores).
        local_ranks = int(os.environ.get("LOCAL_SIZE", dist.get_world_size()))  # deepspeed sets it
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def _unlink_shm_allreduce_buffer() -> None:
    """Remove the name of this rank's DeepSpeed CPU all-reduce buffer once every rank mapped it.

    Why: when all ranks are on one machine, DeepSpeed's CPU backend (its `deepspeed_shm_comm`
    op) creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (69 MB)
    per rank and never unlinks it, so every run, finished or killed, left ~70 MB per rank of
    RAM in /dev/shm until the machine restarts (7 GB here after a day of test runs, then an
    out-of-memory kill). Peers open a buffer by name only while they join the group; after the
    barrier every rank has, so the names can go: the mappings live on until the processes
    end, and then the kernel frees the memory, also after a SIGKILL.
    """
    if os.environ.get("LOCAL_SIZE") != str(dist.get_world_size()):
        return  # DeepSpeed makes the buffers only when every rank is on this machine
    dist.barrier()
    name = "_".join(
        [
            "deepspeed_allreduce_buffer",
            str(os.getuid()),
            os.environ.get("MASTER_ADDR", ""),
            os.environ.get("MASTER_PORT", ""),
            str(dist.get_rank()),
        ]
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path("/dev/shm") / name)


@contextlib.contextmanager
def process_group(timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """`init_distributed` for the block; a group made here is left when the block ends cleanly.

    Why leave it: a process that exits with its group alive leaks it (PyTorch's NCCL backend
    warns so at exit), and gloo's threads may still be running while the interpreter shuts down.

    Why only at a clean end, after a barrier: a group may go only once no rank can still be in
    a collective on it, and every rank reaches the barrier of a successful run. After an error
    some rank may never get there (a barrier would wait for it until `timeout_s`), and
    destroying the group under a rank still blocked on it can block too (torch shuts groups
    down in order because NCCL's abort was collective in some versions). So an exception leaves
    the group alone: the process exits, its connections close, and the other ranks'
    collectives fail or time out (`liveness` names the lost rank).

    A group that already existed (Ray Train's; a test's that trains several times in one
    process) is left to whoever made it.
    """

    made_here = not dist.is_initialized()
    info = init_distributed(timeout_s)
    yield info  # an exception in the block is re-raised here: nothing below runs
    if made_here:
        from deepspeed import comm  # lazy: DeepSpeed ([train] extra)

        dist.barrier()  # every rank is past its last collective
        comm.destroy_process_group()  # torch's, and forgets DeepSpeed's cached groups of it


def describe_rank(info: DistInfo) -> dict[str, Any]:
    """Who this process is, as the launcher placed it (CROSS_RANK: the node's rank)."""
    return {
        **asdict(info),
        "node_rank": int(os.environ.get("CROSS_RANK", "0")),
        "nodes": int(os.environ.get("CROSS_SIZE", "1")),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator  # lazy: DeepSpeed ([train] extra)

    return torch.device(get_accelerator().current_device_name())


def deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The engine's JSON: our `deepspeed` section, checked and completed for this world size."""
    ds = copy.deepcopy(cfg.deepspeed)
    for key, where in _FORBIDDEN_DS_KEYS.items():
        if key in ds:
            raise ConfigError(f"deepspeed.{key}: remove it; it comes from {where}")
    ds.setdefault("gradient_accumulation_steps", 1)
    check_batch_sizes(ds, world_size)
    micro, accum = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    ds["train_batch_size"] = micro * accum * world_size
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.zero_optimization.stage: {stage}; allowed 0, 1, 2, 3")
    if ds.get("bf16", {}).get("enabled") and ds.get("fp16", {}).get("enabled"):
        raise ConfigError("deepspeed.bf16.enabled and deepspeed.fp16.enabled are both true")
    ds.setdefault("steps_per_print", 10**9)  # our own logger reports progress
    return ds


def input_dtype(ds_config: dict[str, Any]) -> torch.dtype:
    """The engine casts the module to bf16/fp16; inputs must follow."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norm weights, adapter biases, any 1-D tensor."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(
    total_steps: int, warmup_steps: int, base_lr: float, min_lr: float
) -> Callable[[int], float]:
    """LR multiplier for step s: linear warmup to 1, then cosine down to min_lr / base_lr."""
    floor = min_lr / base_lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_engine(
    model: nn.Module, cfg: Config, ds_config: dict[str, Any], total_steps: int, steps_per_epoch: int
) -> Any:
    """Wrap `model` (trainable flags already set) in a DeepSpeed engine with AdamW + schedule.

    The scheduler is handed to DeepSpeed so that it steps once per optimizer step and is saved
    and restored with every checkpoint.

    ``train.compile``: `engine.compile()` after `deepspeed.initialize`, not `torch.compile`
    before it. The engine compiles its module in place (`nn.Module.compile`: checkpoint keys
    keep their names, no ``_orig_mod.`` prefix), knows its own ZeRO-3 parameter hooks and
    turns off its NVTX ranges that would break the graph, and can hand over to DeepCompile.
    Checked on CPU: ZeRO 0 and ZeRO 3 with activation checkpointing give the eager losses
    (tests/test_compile.py; ZeRO 1 and 2 by hand).

    Gradient buckets, overlap and bf16's overflow test are sized for the trainable elements
    where the config leaves them unset (`zero_comm.fit`). DeepSpeed keeps fp32 master weights,
    gradient buffers and optimizer state only for what the optimizer holds: the trainable
    parameters (`param_groups`); ``deepspeed.initialize``'s ``model_parameters`` is not used
    when an optimizer is given (engine.py `_configure_optimizer`, DeepSpeed 0.19.8).
    """
    import deepspeed  # lazy: DeepSpeed ([train] extra)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ds_config = zero_comm.fit(ds_config, trainable)
    log.info(
        "%d trainable elements; ZeRO %s, buckets %s, overlap_comm %s",
        trainable,
        ds_config.get("zero_optimization", {}).get("stage", 0),
        ds_config.get("zero_optimization", {}).get("reduce_bucket_size", "DeepSpeed's"),
        ds_config.get("zero_optimization", {}).get("overlap_comm", "DeepSpeed's"),
    )
    optim = cfg.optim
    # fused: ZeRO hands the optimizer one flat fp32 tensor per group; torch's fused AdamW (CPU
    # and CUDA) updates it in one pass instead of one pass per arithmetic operation
    optimizer = torch.optim.AdamW(
        param_groups(model, optim.weight_decay), lr=optim.lr, betas=tuple(optim.betas), fused=True
    )
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup, optim.lr, optim.min_lr)
    )
    # `step_guard`: while this holds 1, fused AdamW skips its update on the device
    optimizer.found_inf = torch.zeros((), device=device())
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if type(engine.checkpoint_engine).__name__ == "TorchCheckpointEngine":  # the default writer
        engine.checkpoint_engine = _weights_only_engine(engine.checkpoint_engine)
    if cfg.train.compile:
        engine.compile()
    return engine


def step_guard(engine: Any) -> torch.Tensor:
    """The device flag that, while it holds 1, makes `engine.step()` leave the weights and the
    optimizer state as they are (`step_losses` raises it on a non-finite loss).

    It is torch's ``found_inf`` protocol, the one `torch.amp.GradScaler` uses to skip a step
    without a host sync: fused AdamW reads the flag in its kernel and, when it is set, neither
    updates the parameters nor counts the step. DeepSpeed passes our AdamW (its
    ``basic_optimizer``) the fp32 master weights at every ZeRO stage and calls its `step`.
    """
    return engine.basic_optimizer.found_inf


def deepspeed_safe_globals() -> list[type]:
    """The only non-tensor classes DeepSpeed pickles into its checkpoint files (fp16 loss
    scalers, the ZeRO stage enum, ZeRO's partition slice addresses): allowed by name, so those
    files load with weights_only=True."""
    # lazy: DeepSpeed ([train] extra)
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)` of a DeepSpeed checkpoint file: no pickled code runs."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _weights_only_engine(default: Any) -> Any:
    """DeepSpeed's torch checkpoint engine with a `load` that runs no pickled code (its own
    `load` passes weights_only=False, torch_checkpoint_engine.py in DeepSpeed 0.19.8)."""
    # lazy: DeepSpeed ([train] extra)
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            return load_weights_only(path, map_location)

    engine = WeightsOnlyCheckpointEngine.__new__(WeightsOnlyCheckpointEngine)
    engine.__dict__.update(default.__dict__)  # same settings (serialization, name)
    return engine


def zero_stage(engine: Any) -> int:
    return engine.zero_optimization_stage()


def local_params(engine: Any) -> list[torch.Tensor]:
    """This rank's share of the trainable weights (ZeRO-3 keeps only a partition per rank)."""
    return [getattr(p, "ds_tensor", p) for p in engine.module.parameters() if p.requires_grad]


def full_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """Gather the full fp32 module weights on rank 0 (None elsewhere); collective call."""
    import deepspeed  # lazy: DeepSpeed ([train] extra)

    module = engine.module
    params = list(module.parameters()) if zero_stage(engine) == 3 else []
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
        if dist.get_rank() != 0:
            return None
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def save_checkpoint(engine: Any, directory: Path, tag: str, client_state: dict) -> None:
    """Every rank writes its files; `latest` is left to `ckpt_integrity.commit` (after the
    manifest), so DeepSpeed must not point it at a checkpoint that has none yet.

    Only what trains is saved (`frozen`): ``exclude_frozen_parameters`` drops the frozen
    parameters from the module state and, under ZeRO 2 and 3, the second copy of them that
    DeepSpeed otherwise adds (``frozen_param_fragments``, engine.py `_save_checkpoint`,
    DeepSpeed 0.19.8); buffers stay.
    """
    engine.save_checkpoint(
        str(directory),
        tag=tag,
        client_state=client_state,
        save_latest=False,
        exclude_frozen_parameters=True,
    )


def universal_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The engine config that loads a universal checkpoint (any data-parallel world size)."""
    checkpoint = {**ds_config.get("checkpoint", {}), "load_universal": True}
    return {**ds_config, "checkpoint": checkpoint}


def to_universal(directory: Path, tag: str, convert: bool) -> tuple[Path, str]:
    """(folder, tag) of `tag`'s universal form, made once by the rank with `convert` set.

    ZeRO 1-3 save each rank's partition of the optimizer state (and, for stage 3, of the
    weights), which only the same number of ranks can load; DeepSpeed's `ds_to_universal`
    rewrites them per parameter, and ``checkpoint.load_universal`` loads that on any number.
    Collective: every rank waits until the conversion exists.
    """

    out = Path(directory) / "universal"
    done = out / "latest_universal"  # written last: a conversion of `tag` is complete
    if convert and not (done.is_file() and done.read_text() == tag):
        from deepspeed.checkpoint import ds_to_universal  # lazy: DeepSpeed ([train] extra)

        args = argparse.Namespace(  # ds_to_universal's command-line options, no process pool
            input_folder=str(Path(directory) / tag),
            output_folder=str(out / tag),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,  # our client state does not carry the version tag
        )
        ds_to_universal.main(args)
        done.write_text(tag)
    dist.barrier()
    return out, tag


def latest_tag(directory: Path) -> str | None:
    """The tag the `latest` file points to (written only after a save's manifest)."""
    latest = Path(directory) / "latest"
    return latest.read_text().strip() if latest.is_file() else None


def load_checkpoint(engine: Any, directory: Path, tag: str) -> dict[str, Any]:
    """Restore module, optimizer and scheduler; returns the client state.

    The module's frozen weights are the ones it was built with (checked by `frozen.check`
    before); DeepSpeed's strict load would refuse their absence, and its non-strict one would
    also pass a missing trainable key, hence the load function that tells them apart.
    """
    where = f"checkpoint {Path(directory) / tag}"

    def load_module(src: dict[str, torch.Tensor], dst: nn.Module) -> None:
        frozen.load_trainable(dst, src, where)

    path, client_state = engine.load_checkpoint(
        str(directory),
        tag=tag,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        custom_load_fn=load_module,
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {directory}/{tag}")
    return client_state


def checkpoint_folder(directory: Path, tag: str | None = None) -> tuple[Path, str]:
    """(checkpoints folder, tag) of a checkpoints folder (its `latest`) or of a tag folder."""
    directory = Path(directory)
    if tag is None and latest_tag(directory) is None and (directory.parent / "latest").is_file():
        directory, tag = directory.parent, directory.name  # a tag folder was given
    tag = tag or latest_tag(directory)
    if tag is None:
        raise FileNotFoundError(f"no DeepSpeed checkpoint ('latest' file) in {directory}")
    return directory, tag


def read_checkpoint_weights(directory: Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """fp32 module weights a checkpoint folder holds, without an engine (any ZeRO stage): the
    trainable ones and the buffers (`frozen.load_trainable` puts them on a rebuilt model)."""
    directory, tag = checkpoint_folder(directory, tag)
    # ZeRO-3 writes one model-states file per rank (same buffers and frozen shapes in each)
    name = "mp_rank_00_model_states.pt"
    if not (directory / tag / name).is_file():
        name = f"zero_pp_rank_0_{name}"

    why = problem(directory / tag)
    if why is not None:  # verified before anything in it is unpickled
        raise CheckpointDamagedError(f"checkpoint {directory / tag} is damaged: {why}")
    states = load_weights_only(directory / tag / name)
    weights = {k: v.float() for k, v in states["module"].items() if v.numel()}
    stage = states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0)
    if stage > 0:  # trainable weights: the fp32 master copy held in the ZeRO partitions
        # Third-party loader: zero_to_fp32 unpickles the optimizer files with weights_only=False
        # (DeepSpeed 0.19.8, zero_to_fp32.py); they were just checked against the manifest.
        # lazy: DeepSpeed ([train] extra)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights.update(get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag))
    return weights
