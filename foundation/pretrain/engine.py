"""The DeepSpeed training engine shared by pretraining and fine-tuning.

One process::

    python pretrain.py --recipe deeperbrain-tiny --output-dir runs/tiny

N processes on one machine, or several machines listed in a hostfile::

    deepspeed --num_gpus 8 pretrain.py --recipe slim-brain --set train.lr=3e-4
    deepspeed --hostfile hosts.txt pretrain.py --recipe slim-brain

What a run does: ``deepspeed.initialize`` with the recipe's DeepSpeed section
(ZeRO 0-3, bf16, gradient accumulation and clipping), AdamW with warmup +
cosine, a resumable distributed sampler seeded per epoch (one shuffle of the corpus dealt out to the ranks, or
with ``train.shard_assignment: rank`` each rank on its own cache shards, :mod:`.shard_sampler`), a tqdm bar on rank 0,
``metrics.jsonl`` and ``curves.png``, checkpoints every N steps (last K kept, an
atomic ``latest``), exact ``--resume``, a checkpoint on SIGTERM/SIGINT, a clear
stop on a non-finite loss, on a lost rank (named, with the checkpoint to
``--resume`` from; collectives wait at most ``train.collective_timeout_s``) and
on a checkpoint that cannot be written (``latest`` stays on the previous one).
``run()`` returns a :class:`RunResult`; exporting the final checkpoint
(``foundation.pretrain.export.export_run``) is a separate step that the
``pretrain`` command takes afterwards.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from foundation.config import RecipeConfig
from foundation.errors import CheckpointError, FoundationError, TrainingError
from foundation.atomic import atomic_write_text
from foundation.pretrain.checkpoint import CheckpointDir, seed_all
from foundation.data.batch import to_device
from foundation.data.protocol import preprocessing_of
from foundation.pretrain.components import Components, TrainModule, build_components, build_objective
from foundation.pretrain.ds_compat import scalar_safe_broadcast
from foundation.pretrain.distributed import DistInfo, apply_timeout, init_distributed, is_collective_failure
from foundation.pretrain.grad_clip import StageZeroClip, split_clipping
from foundation.pretrain.result import RunResult
from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer
from foundation.pretrain.run_log import RunLog
from foundation.pretrain.sampler import ResumableDistributedSampler
from foundation.pretrain.shard_sampler import ShardLocalSampler
from foundation.pretrain.sparsity_log import SparsityLog

__all__ = ["RunResult", "Engine", "deepspeed_config", "drop_identity_allreduce"]


def deepspeed_config(recipe: RecipeConfig) -> dict[str, Any]:
    """The DeepSpeed config dict of a recipe (micro batch, accumulation, clipping, ZeRO, bf16, extras)."""
    ds = recipe.deepspeed
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": recipe.train.micro_batch_size,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.zero_stage == 3:
        cfg["zero_optimization"].update(stage3_gather_16bit_weights_on_model_save=True)
    cfg.update(ds.extra)
    return cfg


def drop_identity_allreduce(engine: Any) -> bool:
    """Turn off DeepSpeed's gradient all-reduce where it is an identity: ZeRO stage 0 on one data-parallel rank.

    There DeepSpeed still flattens every gradient into buckets, all-reduces them over the one rank, divides by 1
    and copies them back, every step (``buffered_allreduce_fallback``; measured in ``benchmarks/RESULTS.md``,
    "Issue 16, continued"). Stages 1-2 keep it: their optimizer moves gradients into its partitions there.

    Returns:
        Whether it was turned off.
    """
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        engine.enable_backward_allreduce = False
        return True
    return False


def _step_values(loss: torch.Tensor, metrics: dict[str, Any], keys: list[str], stopping: bool) -> torch.Tensor:
    """``[loss, non-finite flag, stop flag, *metrics]`` as one float64 CPU tensor: the micro-step's one host sync.

    A non-finite loss contributes 0 to the loss and the metrics (and 1 to the flag), so the sum over ranks stays
    finite and every rank skips the step together.
    """
    loss = loss.detach().to(torch.float64).reshape(())
    finite = torch.isfinite(loss)
    zero = torch.zeros_like(loss)
    shown = [torch.as_tensor(metrics[k], dtype=torch.float64, device=loss.device).detach().reshape(()) for k in keys]
    values = torch.stack([torch.where(finite, loss, zero), (~finite).to(torch.float64), zero + float(stopping),
                          *(torch.where(finite, m, zero) for m in shown)])
    return values.cpu()


class _StopSignal:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _KeepWriteError:
    """Stands in for DeepSpeed's checkpoint engine during one save: the first failed write is kept, not raised.

    Later writes of the same save are skipped (the checkpoint is lost anyway). Everything else goes to ``inner``.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.error: OSError | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        try:
            self.inner.makedirs(path, exist_ok=exist_ok)
        except OSError as err:
            self.error = self.error or err

    def save(self, state_dict: Any, path: str) -> None:
        if self.error is not None:
            return
        try:
            self.inner.save(state_dict, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
            if is_collective_failure(err):
                raise
            self.error = err if isinstance(err, OSError) else OSError(f"writing {path}: {err}")
            self.error.__cause__ = err


class Engine:
    """Train a recipe's model with DeepSpeed.

    Args:
        recipe: the validated recipe.
        output_dir: run folder (checkpoints, logs, curves, export).
        resume: continue from ``output_dir/checkpoints/latest``.
        stop_after: stop (with a checkpoint) after this many optimizer steps of
            this invocation; the schedule still spans ``train.steps``.
        model, dataset: prebuilt model and dataset to train instead of the
            recipe's (fine-tuning wrappers, data subsets); the recipe still gives
            the objective, optimisation and DeepSpeed settings.
    """

    def __init__(self, recipe: RecipeConfig, output_dir: str | Path, *, resume: bool = False,
                 stop_after: int | None = None, model: torch.nn.Module | None = None, dataset: Any = None) -> None:
        self.recipe = recipe
        self.output_dir = Path(output_dir)
        self.resume = resume
        self.stop_after = stop_after
        if (model is None) != (dataset is None):
            raise ValueError("Engine: pass both model and dataset to train prebuilt components, or neither")
        self.model, self.dataset = model, dataset
        self.ds_engine: Any = None  # the DeepSpeed engine, set by run() (for inspection and benchmarks)
        self._step = 0  # optimizer steps done (named when a rank is lost)
        self._clip: StageZeroClip | None = None  # the engine's own clipping (ZeRO stage 0, fp32), set by run()

    def run(self) -> RunResult:
        """Train until ``train.steps`` (or a stop request) and return where the results are.

        Raises:
            TrainingError: a non-finite loss, or a collective failed (a rank died or hung); the message names the
                lost ranks, the step and the checkpoint to ``--resume`` from.
            CheckpointError: ``--resume`` found no usable checkpoint, or a checkpoint could not be written.
        """
        train = self.recipe.train
        dist = init_distributed(timeout_s=train.collective_timeout_s)
        ckpts = CheckpointDir(self.output_dir / "checkpoints", keep_last=train.keep_last)
        resume_tag = self._resume_tag(ckpts)
        try:
            dist = dist.register(self.output_dir)
            return self._run(dist, ckpts, resume_tag)
        except RuntimeError as err:
            if dist.world_size == 1 or isinstance(err, FoundationError) or not is_collective_failure(err):
                raise
            raise self._lost_rank_error(dist, ckpts, err) from err

    def _lost_rank_error(self, dist: DistInfo, ckpts: CheckpointDir, err: RuntimeError) -> TrainingError:
        """The error a rank raises when a collective fails: who was lost, at which step, how to continue."""
        try:
            tag = ckpts.latest()
        except CheckpointError:  # `latest` names a torso: say so rather than point at it
            tag = None
        if tag is not None:
            resume = f"restart all {dist.world_size} ranks with --resume to continue from {ckpts.root / tag}"
        else:
            resume = "no checkpoint was written yet: restart the run without --resume"
        # gloo's text ends in advice about reading the other ranks' logs; the first sentence is the cause
        text = str(err).strip()
        detail = text.splitlines()[0].split(" This is typically")[0] if text else type(err).__name__
        return TrainingError(
            f"rank {dist.rank}: a collective failed after optimizer step {self._step} "
            f"({dist.describe_failure()}); the run stopped. {resume}. (cause: {detail})"
        )

    def _run(self, dist: DistInfo, ckpts: CheckpointDir, resume_tag: str | None) -> RunResult:
        import deepspeed

        recipe, train = self.recipe, self.recipe.train
        torch.manual_seed(train.seed)  # same initial weights on every rank
        if self.model is not None:
            parts = Components(model=self.model, objective=build_objective(recipe), dataset=self.dataset)
        else:
            parts = build_components(recipe, prepare=True)  # local rank 0 prepares the data, the others wait
        if recipe.memory.act_bits:
            from foundation.kernels.mesa import apply_act_bits

            apply_act_bits(parts.model, recipe.memory.act_bits)
        # ZeRO-3 gathers parameters per module and reduces its own way; stages 0-2 need the same gradients on
        # every rank (see TrainModule)
        module = TrainModule(parts.model, parts.objective,
                             touch_all_params=dist.world_size > 1 and recipe.deepspeed.zero_stage < 3)
        optimizer = build_optimizer(module, train)
        if train.compile:
            # the step after mask sampling is compiled; parameters and state-dict keys stay the module's own, so
            # checkpoints, resume and export read as without compile
            module.compile_step(train.compile_mode)
        # at ZeRO stage 0 in fp32 the engine clips (one foreach pass) in place of DeepSpeed's per-parameter loop
        ds_config, clip_at = split_clipping(deepspeed_config(recipe))
        with scalar_safe_broadcast():  # learnable scalars (CRReLU, ASH, ProAct) would stop DeepSpeed's broadcast
            engine, _, _, _ = deepspeed.initialize(
                model=module, optimizer=optimizer, config=ds_config,
                lr_scheduler=lambda opt: WarmupCosineScheduler(opt, train),
            )
        self.ds_engine = engine
        self._clip = StageZeroClip(module, clip_at) if clip_at > 0.0 else None
        drop_identity_allreduce(engine)
        apply_timeout(train.collective_timeout_s)  # DeepSpeed's own groups, too
        # epoch and position: where the data order stands (samples of the epoch's order consumed, all ranks);
        # under shard_assignment=rank the segment and the per-shard progress (see shard_sampler)
        state: dict[str, Any] = {"step": 0, "micro_batches": 0, "nonfinite_skips": 0, "epoch": 0, "position": -1,
                                 "order": train.shard_assignment}
        if train.shard_assignment == "rank":
            state.update(shard_world=dist.world_size, shard_base=None, shard_taken=0, shard_progress=None)
        if resume_tag is not None:
            client = self._load(engine, ckpts, resume_tag, dist)
            saved_order = client.get("order", "global")
            if saved_order != train.shard_assignment:
                raise CheckpointError(
                    f"{ckpts.root / resume_tag}: written with train.shard_assignment={saved_order}, resumed with "
                    f"{train.shard_assignment}; the data positions of the two orders do not translate: resume with "
                    f"--set train.shard_assignment={saved_order}")
            state.update({k: client[k] for k in state if k in client})
            self._step = state["step"]
        log = RunLog(self.output_dir, recipe.name, train.tensorboard and dist.is_main,
                     resume_step=state["step"]) if dist.is_main else None
        if dist.is_main:
            atomic_write_text(self.output_dir / "recipe.yaml", recipe.to_yaml())
        try:
            with _StopSignal() as stop:
                result = self._loop(engine, parts.dataset, dist, ckpts, state, log, stop)
        finally:
            if log is not None:
                log.close()
        describe = getattr(parts.dataset, "describe", None)  # a Subset (fine-tuning) has none
        result.data_summary = str(describe()) if callable(describe) else f"{len(parts.dataset)} samples."
        result.preprocessing = preprocessing_of(parts.dataset)
        return result

    def _load(self, engine: Any, ckpts: CheckpointDir, tag: str, dist: DistInfo) -> dict[str, Any]:
        """Restore checkpoint ``tag`` into ``engine``, on the number of ranks that wrote it or on another.

        On the same number of ranks DeepSpeed's loader restores everything and each rank its RNG states. On
        another (elastic resume, :mod:`foundation.pretrain.reshard`) the states are re-partitioned, read back and
        compared with the saved ones (the comparison goes to ``elastic_resume.json``); ranks that have an RNG
        file restore it, new ranks seed theirs from the recipe seed, the step and the rank.

        Returns:
            The checkpoint's client state (step, data position, ...).
        """
        from foundation.pretrain import reshard

        folder = ckpts.root / tag
        layout = reshard.read_layout(folder)
        if layout.world_size == dist.world_size:
            path, client = engine.load_checkpoint(str(ckpts.root), tag=tag)
            if path is None:
                raise CheckpointError(f"DeepSpeed could not load {folder}; the folder is incomplete")
            ckpts.load_rng(tag, dist.rank)
            return client
        if reshard.needs_resharding(layout, dist.world_size):
            client = reshard.load_resharded(engine, layout)
            expected = reshard.saved_states(layout)
        else:  # whole states (ZeRO 0): DeepSpeed reads them on any number of ranks
            path, client = engine.load_checkpoint(str(ckpts.root), tag=tag)
            if path is None:
                raise CheckpointError(f"DeepSpeed could not load {folder}; the folder is incomplete")
            expected = reshard.saved_whole_states(layout, engine)
        n, worst, problems = reshard.compare_states(expected, engine)
        if problems or worst > 0.0:
            raise CheckpointError(f"{folder}: resuming {layout.world_size}-rank states on {dist.world_size} ranks "
                                  f"did not reproduce them (largest difference {worst:g}; "
                                  f"{'; '.join(problems[:5]) or 'values differ'}); resume on {layout.world_size} ranks")
        if (folder / f"rng_rank{dist.rank}.json").is_file():
            ckpts.load_rng(tag, dist.rank)
        else:
            seed_all(self.recipe.train.seed + 1_000_003 * int(client.get("step", 0)) + dist.rank)
        saved_batch = reshard.global_batch(layout)
        batch = self.recipe.train.micro_batch_size * self.recipe.deepspeed.gradient_accumulation_steps
        if dist.is_main:
            record = {"tag": tag, "saved_world_size": layout.world_size, "world_size": dist.world_size,
                      "zero_stage": layout.zero_stage, "tensors_compared": n, "largest_difference": worst,
                      "saved_global_batch": saved_batch, "global_batch": batch * dist.world_size}
            atomic_write_text(self.output_dir / "elastic_resume.json", json.dumps(record, indent=1))
            print(f"elastic resume: {tag} written by {layout.world_size} rank(s) loaded on {dist.world_size}; "
                  f"{n} states re-read equal to the saved ones", flush=True)
            if saved_batch is not None and saved_batch != batch * dist.world_size:
                print(f"elastic resume: the global batch was {saved_batch} samples per step and is now "
                      f"{batch * dist.world_size}; set deepspeed.gradient_accumulation_steps so that micro-batch x "
                      "accumulation x ranks stays equal to continue the same optimisation", flush=True)
        return client

    def _resume_tag(self, ckpts: CheckpointDir) -> str | None:
        if not self.resume:
            return None
        tag = ckpts.latest()
        if tag is None:
            raise CheckpointError(f"--resume: no checkpoint under {ckpts.root}; run without --resume to start anew")
        ckpts.verify(tag)  # nothing unsafe or incomplete reaches DeepSpeed's loader
        return tag

    def _loader(self, dataset: Any, dist: DistInfo) -> tuple[DataLoader, Any]:
        train = self.recipe.train
        if train.shard_assignment == "rank":
            sampler = self._shard_sampler(dataset, dist)
        else:
            sampler = ResumableDistributedSampler(len(dataset), dist.world_size, dist.rank, seed=train.seed)
        if isinstance(sampler, ResumableDistributedSampler) and sampler.per_rank < train.micro_batch_size:
            raise TrainingError(
                f"data: {len(dataset)} samples give {sampler.per_rank} per rank, fewer than "
                f"train.micro_batch_size={train.micro_batch_size}; lower the batch size or add data"
            )
        # a private generator: starting an epoch's iterator must not draw from the global RNG, or a
        # resumed run (which starts mid-epoch) would see other masks than the uninterrupted one
        loader = DataLoader(dataset, batch_size=train.micro_batch_size, sampler=sampler, drop_last=True,
                            num_workers=train.num_workers, collate_fn=getattr(dataset, "collate", None),
                            generator=torch.Generator().manual_seed(train.seed + dist.rank))
        return loader, sampler

    def _shard_sampler(self, dataset: Any, dist: DistInfo) -> ShardLocalSampler:
        """The sampler of ``train.shard_assignment: rank``, once this node holds the rank's shard files.

        A dataset with ``use_shards(shards)`` (the ultrasound one, whose items are batches planned from several
        records) is then told the rank's shards, so that it draws its records from them only.

        Raises:
            DataError: the dataset keeps no shards, fewer shards than ranks, or a shard file of this rank is absent.
        """
        from foundation.data.shard_plan import check_shard_files
        from foundation.errors import DataError

        if not callable(getattr(dataset, "shard_map", None)):
            raise DataError(f"data: {type(dataset).__name__} does not say which cache shard holds each item, so "
                            "train.shard_assignment=rank cannot assign shards to ranks; set "
                            "train.shard_assignment=global")
        shard_map = dataset.shard_map()
        sampler = ShardLocalSampler(shard_map.item_shard, shard_map.n_shards, dist.world_size, dist.rank,
                                    seed=self.recipe.train.seed, batch=self.recipe.train.micro_batch_size,
                                    where=shard_map.where)
        check_shard_files(shard_map, sampler.shards, dist.rank, dist.world_size)
        use_shards = getattr(dataset, "use_shards", None)  # a dataset whose items draw from several records
        if callable(use_shards):  # (ultrasound planned batches) draws them from this rank's shards only
            use_shards(sampler.shards)
        return sampler

    def _loop(self, engine: Any, dataset: Any, dist: DistInfo, ckpts: CheckpointDir, state: dict[str, Any],
              log: RunLog | None, stop: _StopSignal) -> RunResult:
        recipe, train = self.recipe, self.recipe.train
        accum = recipe.deepspeed.gradient_accumulation_steps
        loader, sampler = self._loader(dataset, dist)
        by_rank = isinstance(sampler, ShardLocalSampler)
        if by_rank:
            if state["shard_world"] != dist.world_size:  # resumed on another rank count: a new segment of the
                # epoch starts where every shard's reading stopped
                state.update(shard_world=dist.world_size, shard_base=state["shard_progress"], shard_taken=0)
        elif state["position"] < 0:  # a fresh run, or a checkpoint from before positions were saved (same ranks)
            per_epoch = sampler.per_rank // train.micro_batch_size
            state["epoch"], within = divmod(state["micro_batches"], per_epoch)
            state["position"] = within * train.micro_batch_size * dist.world_size
        float_dtype = torch.bfloat16 if recipe.deepspeed.bf16 else None
        start_step = state["step"]
        last_tag = ckpts.latest() if self.resume else None
        bar = tqdm(total=train.steps, initial=start_step, desc=recipe.name, dynamic_ncols=True,
                   disable=not (dist.is_main and train.progress_bar))
        result = RunResult(self.output_dir, start_step, stopped_early=False)
        sparsity = SparsityLog(self.output_dir, dataset, train.micro_batch_size, train.seed, engine.device, float_dtype,
                               start_step if self.resume else None, writer=dist.is_main) if train.sparsity_every else None
        sums: dict[str, float] = {}
        n_micro, t_step = 0, time.perf_counter()
        keys: list[str] | None = None
        grad_norm: torch.Tensor | None = None  # the step's norm before clipping, where the engine clips
        while state["step"] < train.steps:
            if by_rank:
                sampler.set_epoch(state["epoch"], state["shard_base"], state["shard_taken"])
            else:
                sampler.set_epoch(state["epoch"], start=min(state["position"], sampler.total))
            for batch in loader:
                state["micro_batches"] += 1
                if by_rank:
                    state["shard_taken"] += train.micro_batch_size
                else:
                    state["position"] += train.micro_batch_size * dist.world_size
                loss, metrics = engine(to_device(batch, engine.device, float_dtype))
                keys = keys or sorted(metrics)
                reduced = dist.all_reduce_sum(_step_values(loss, metrics, keys, stop.received is not None)).tolist()
                if reduced[1] > 0:
                    state["nonfinite_skips"] += 1
                    if state["nonfinite_skips"] > train.max_nonfinite_skips:
                        where = f"last good checkpoint: {ckpts.root / last_tag}" if last_tag else "no checkpoint yet"
                        raise TrainingError(
                            f"non-finite loss at optimizer step {state['step'] + 1} (micro-batch "
                            f"{state['micro_batches']}, {state['nonfinite_skips']} so far; {where}); lower train.lr, "
                            "check the data for NaN/inf, or allow skips with train.max_nonfinite_skips"
                        )
                    continue
                engine.backward(loss)
                if self._clip is not None and engine.is_gradient_accumulation_boundary():
                    grad_norm = self._clip()  # on the gradients DeepSpeed averaged over the ranks in backward
                engine.step()
                n_micro += 1
                for k, v in zip(["loss", *keys], [reduced[0], *reduced[3:]]):
                    sums[k] = sums.get(k, 0.0) + v / dist.world_size
                if n_micro < accum:
                    continue
                state["step"] += 1
                self._step = state["step"]
                engine.module.on_step_end(state["step"])
                within = sampler.fraction(state["shard_taken"]) if by_rank else state["position"] / sampler.total
                record = self._record(state, sums, n_micro, engine, time.perf_counter() - t_step, dist, within,
                                      grad_norm)
                if sparsity is not None and state["step"] % train.sparsity_every == 0:
                    sparsity.measure(engine.module, state["step"])  # not in the step's time
                sums, n_micro, t_step = {}, 0, time.perf_counter()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4g}", sps=f"{record['samples_per_s']:.1f}")
                if log is not None and (state["step"] % train.log_every == 0 or state["step"] == train.steps):
                    log.log(record)
                result.metrics = {k: record[k] for k in ["loss", *keys]}
                stop_now = reduced[2] > 0 or (self.stop_after is not None
                                              and state["step"] - start_step >= self.stop_after)
                due = train.checkpoint_every and state["step"] % train.checkpoint_every == 0
                if due or stop_now or state["step"] >= train.steps:
                    if by_rank:  # every rank replays every rank's order: the same progress everywhere
                        state["shard_progress"] = sampler.progress(state["shard_taken"]).tolist()
                        state["shard_base"] = sampler.base.tolist()
                    last_tag = self._save(engine, ckpts, state, dist, log)
                    if not stop_now and state["step"] < train.steps:
                        # a signal that came while the checkpoint was written stops the run here, on every
                        # rank, rather than after one more step and a second checkpoint
                        signalled = torch.tensor([0.0 if stop.received is None else 1.0], dtype=torch.float64)
                        stop_now = dist.all_reduce_sum(signalled).item() > 0
                if stop_now:
                    result.stopped_early = True
                    break
                if state["step"] >= train.steps:
                    break
            else:  # the epoch's order is used up (a tail shorter than a micro-batch per rank is left out)
                state["epoch"], state["position"] = state["epoch"] + 1, 0
                if by_rank:
                    state.update(shard_base=None, shard_taken=0)
            if result.stopped_early:
                break
        bar.close()
        result.step = state["step"]
        result.checkpoint = ckpts.root / last_tag if last_tag else None
        result.curves = log.curves_path if log is not None and log.records else None
        return result

    def _record(self, state: dict[str, Any], sums: dict[str, float], n_micro: int, engine: Any,
                seconds: float, dist: DistInfo, within: float,
                grad_norm: torch.Tensor | None = None) -> dict[str, Any]:
        """The step's log record; ``grad_norm``: the norm the engine clipped at (else DeepSpeed's, when it has one)."""
        samples = n_micro * self.recipe.train.micro_batch_size * dist.world_size
        record: dict[str, Any] = {"step": state["step"]}
        record.update({k: v / n_micro for k, v in sums.items()})
        lrs = engine.get_lr()
        record["lr"] = float(lrs[0]) if lrs else 0.0
        norm = grad_norm if grad_norm is not None else engine.get_global_grad_norm()
        if norm is not None:
            record["grad_norm"] = float(norm)
        record["samples_per_s"] = samples / max(seconds, 1e-9)
        record["epoch"] = state["epoch"] + within  # epochs done plus the fraction of the current one
        return record

    def _save(self, engine: Any, ckpts: CheckpointDir, state: dict[str, Any], dist: DistInfo,
              log: RunLog | None) -> str:
        client = dict(state, recipe=self.recipe.to_yaml())

        def save_states(root: Path, tag: str) -> None:
            # DeepSpeed's save runs collectives between its writes: a rank whose write fails must still take
            # part in them (or the others wait for it forever), so the error is kept and raised afterwards
            writer = _KeepWriteError(engine.checkpoint_engine)
            engine.checkpoint_engine = writer
            try:
                engine.save_checkpoint(str(root), tag=tag, client_state=client, save_latest=False)
            finally:
                engine.checkpoint_engine = writer.inner
            if writer.error is not None:
                raise writer.error

        tag = ckpts.save(save_states, state["step"], dist.rank, gather=dist.gather)
        if log is not None:
            log.plot()
        return tag
