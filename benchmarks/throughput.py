"""Training throughput of ftsweep's trainer against a plain PyTorch loop and the HF Trainer,
the cost of frequent evaluation, and the wall time of a full CV. Prints its numbers.

Batches use CommonLit's token lengths (../shared/data/commonlit_token_lengths.txt, else
the copy in benchmarks/data/) with random token ids; weights are random (the shape is
what costs). On a GPU run it at full size:

    python benchmarks/throughput.py                       # roberta-base shape, batch 8, 200 steps
    python benchmarks/throughput.py --smoke               # tiny model, a few steps (CPU test)

Parts: (1) samples/s of ftsweep / plain loop (pad to 256, fused AdamW) / HF Trainer
(pad to 256), ratio, peak GPU memory, estimated MFU; (2) one fold with eval=frequent
(every 10 batches) against eval=epoch; (3) full 5-fold x 5-epoch CV of the bundled
MiniLM on 2,834 rows of those lengths, through `run_cv` (tokenisation and MLflow included).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import ftsweep  # noqa: F401
from ftsweep.cv.fold import build_fold_model, train_fold, train_model
from ftsweep.cv.pipeline import Job, run_cv
from ftsweep.cv.result import CvResult
from ftsweep.data.batching import Encoded
from ftsweep.model.regressor import build_regressor, load_backbone
from ftsweep.train.devices import resolve_device
from ftsweep.train.loop import FoldSplit, NullPhases, Runtime

ROOT = Path(__file__).resolve().parents[1]
# The shared file when this checkout sits beside ../shared, else the repo's copy (a GPU box has only the repo).
LENGTHS_FILES = [ROOT.parent / "shared" / "data" / "commonlit_token_lengths.txt",
                 ROOT / "benchmarks" / "data" / "commonlit_token_lengths.txt"]
H100_BF16_DENSE_TFLOPS = 989.0


def commonlit_lengths(n: int, rng: np.random.Generator, cap: int) -> np.ndarray:
    found = [f for f in LENGTHS_FILES if f.exists()]
    if found:
        pool = np.loadtxt(found[0], dtype=int)
    else:  # CommonLit's range: 158-314 tokens, mean 217
        pool = np.clip(rng.normal(217, 28, 2834).round(), 158, 314).astype(int)
    return np.minimum(rng.choice(pool, n), cap)


def synthetic_encoded(lengths: np.ndarray, vocab: int, rng: np.random.Generator) -> Encoded:
    ids = [np.r_[101, rng.integers(1000, vocab - 1, n - 2), 102].astype(np.int64) for n in lengths]
    return Encoded(ids, lengths.copy(), 0, 0)


def compose_cfg(overrides: list[str], root: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.output_root={root}"])
    with open_dict(cfg):
        cfg.tracking.experiment = "benchmark"
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ftsweep(cfg, encoded, targets, rows, device, dtype, steps, warmup: int = 10,
                 around=contextlib.nullcontext) -> tuple[float, float]:
    """Seconds for `warmup` optimizer steps of ftsweep's fit_fold (kernel plans, allocator, compiling),
    then for `steps` more, inside `around()` (e.g. a profiler). The model gets the config's
    trainer.compile / gradient_checkpointing."""
    split, runtime = FoldSplit(encoded, targets, rows, rows[:8]), Runtime(device, dtype, 0)
    model = build_fold_model(cfg, load_backbone(cfg.model), split, runtime)  # one model: warm kernels carry over
    timings = []
    for n, context in ((min(warmup, steps), contextlib.nullcontext), (steps, around)):
        with open_dict(cfg):
            cfg.trainer.max_steps = n
        sync(device)
        t = time.perf_counter()
        with context():
            train_model(model, cfg, split, runtime)
            sync(device)
        timings.append(time.perf_counter() - t)
    return timings[0], timings[1]


def padded_batches(encoded: Encoded, rows: np.ndarray, batch_size: int, width: int):
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(batch):
            n = min(encoded.lengths[r], width)
            ids[i, :n], mask[i, :n] = encoded.ids[r][:n], 1
        yield torch.from_numpy(ids), torch.from_numpy(mask), batch


def time_plain_loop(cfg, encoded, targets, rows, device, dtype, steps, width) -> float:
    """The loop people write first: pad everything to `width`, AdamW (fused on CUDA), bf16 autocast."""
    torch.manual_seed(0)
    model = build_regressor(load_backbone(cfg.model), cfg.head).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda" or None)
    y_all = torch.tensor(targets, dtype=torch.float32)
    bs = int(cfg.trainer.batch_size)
    order = np.resize(rows, (steps + 10) * bs)
    t = 0.0
    for i, (ids, mask, batch) in enumerate(padded_batches(encoded, order, bs, width)):
        if i == 10:
            sync(device)
            t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(ids.to(device), mask.to(device))
        loss = torch.nn.functional.mse_loss(pred.float(), y_all[batch].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t


def time_hf_trainer(cfg, encoded, targets, rows, device, dtype, steps, width, best: bool = False,
                    compile: bool = False, warmup: int = 10, around=contextlib.nullcontext) -> tuple[float, float]:
    """transformers.Trainer on the same model, batch size and optimizer, padding to `width`; with `best`,
    its fastest settings for this job: length-grouped sampling and padding to the batch's longest row
    (rounded up to 32), two data-loader workers on a GPU; with `compile`, `torch_compile=True` (its
    default mode, as a Trainer user turns it on). Like time_ftsweep: the seconds of a first run of
    `warmup` steps (compiling happens there), then of `steps` more on the same model, inside `around()`."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    class WithLoss(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels=None):
            pred = self.inner(input_ids, attention_mask)
            out = {"logits": pred}
            if labels is not None:
                out["loss"] = torch.nn.functional.mse_loss(pred.float(), labels.float())
            return out

    def collate(items):
        ids = torch.zeros((len(items), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        if best:
            longest = max(len(it["input_ids"]) for it in items)
            n_cols = min(width, -(-longest // 32) * 32)
            ids, mask = ids[:, :n_cols], mask[:, :n_cols]
        for i, it in enumerate(items):
            n = min(len(it["input_ids"]), width)
            ids[i, :n], mask[i, :n] = torch.as_tensor(it["input_ids"][:n]), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([it["labels"] for it in items])}

    data = [{"input_ids": encoded.ids[r], "labels": float(targets[r])} for r in rows]
    torch.manual_seed(0)
    model = WithLoss(build_regressor(load_backbone(cfg.model), cfg.head))
    timings = []
    fields = TrainingArguments.__dataclass_fields__  # transformers 5 renamed group_by_length
    grouping = {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields else {
        "group_by_length": True}
    extra = {**grouping, "dataloader_num_workers": 2 if device.type == "cuda" else 0} if best else {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, context in ((min(warmup, steps), contextlib.nullcontext), (steps, around)):
            args = TrainingArguments(
                output_dir=tmp, max_steps=n, per_device_train_batch_size=int(cfg.trainer.batch_size),
                learning_rate=1e-5, bf16=dtype is not None and device.type == "cuda", report_to=[],
                save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=device.type == "cpu",
                optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch", torch_compile=compile, **extra,
            )
            trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate)
            trainer.remove_callback(PrinterCallback)
            with context():
                out = trainer.train()
            timings.append(out.metrics["train_runtime"])  # its own clock: the training loop, not the set-up
    return timings[0], timings[1]


def train_flops_per_sample(model_cfg_fields, mean_tokens: float) -> float:
    """~6 x (non-embedding params) x tokens, plus attention's 12 x layers x hidden x tokens^2."""
    h, layers, inter = model_cfg_fields
    params = layers * (4 * h * h + 2 * h * inter)
    return 6 * params * mean_tokens + 12 * layers * h * mean_tokens**2


def fold_eval_cost(overrides, root, encoded, targets, device, dtype,
                   new_timer=NullPhases) -> tuple[float, float, int, dict]:
    """Wall time of one fold (4:1 split) with eval=epoch and eval=frequent (every 10 batches), the
    evaluations of the second, and what `new_timer()` (a PhaseTimer per fold) measured, by strategy."""
    n = len(targets)
    rows = np.arange(n)
    train, val = rows[: n * 4 // 5], rows[n * 4 // 5 :]
    out, timers = [], {}
    for ev in ("epoch", "frequent"):
        cfg = compose_cfg([*overrides, f"eval={ev}"], root)
        backbone = load_backbone(cfg.model)
        timers[ev] = new_timer()
        sync(device)
        t = time.perf_counter()
        res = train_fold(cfg, backbone, FoldSplit(encoded, targets, train, val), Runtime(device, dtype, 0, timers[ev]))
        sync(device)
        out.append(time.perf_counter() - t)
    return out[0], out[1], res.evaluations, timers


def full_cv(overrides: list[str], n_rows: int, root: Path, rng: np.random.Generator) -> tuple[float, float]:
    """A whole `run_cv` on a CSV whose passages have CommonLit's token lengths (one WordPiece per word)."""
    lengths = commonlit_lengths(n_rows, rng, 512)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n_rows)], "excerpt": [" ".join(["word"] * (n - 2)) for n in lengths],
                          "target": rng.normal(-0.96, 1.03, n_rows)})
    path = root / "bench.csv"
    frame.to_csv(path, index=False)
    seconds, result = timed_cv([*overrides, "data=commonlit", f"data.path={path}", "tracking.log_lr=true"], root)
    return seconds, result.mean()


def timed_cv(overrides: list[str], root: Path, job: Job | None = None) -> tuple[float, CvResult]:
    """Wall seconds and result of one `run_cv` (data, tokenisation, folds, MLflow: all of it)."""
    cfg = compose_cfg(overrides, root)
    t = time.perf_counter()
    result = run_cv(cfg, job)
    return time.perf_counter() - t, result


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps: a CPU check that it all runs")
    p.add_argument("--model", default=None, help="model preset for parts 1-2 (default roberta_base; smoke: tiny)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--fold-rows", type=int, default=None, help="rows for part 2 (default 2834; smoke: 96)")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-cv", action="store_true")
    args = p.parse_args(argv)
    smoke = args.smoke
    model = args.model or ("tiny" if smoke else "roberta_base")
    steps = args.steps or (6 if smoke else 200)
    width = 64 if smoke else 256
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="ftsweep-bench-"))
    base = [f"model={model}", "model.source=config", f"trainer.batch_size={args.batch_size}",
            f"trainer.max_length={width}", "trainer.epochs=1", "head=pooler", "trainer.grad_clip=1.0"]
    if device_is_cuda := torch.cuda.is_available():
        base.append("trainer.pad_to_multiple_of=32")
    cfg = compose_cfg(base, root)
    device, dtype = resolve_device(cfg.trainer)
    name = torch.cuda.get_device_name(0) if device_is_cuda else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; model {model} (random weights); batch {args.batch_size}; "
          f"precision {'bf16' if dtype else 'fp32'}")

    n_rows = max(steps + 10, 64) * args.batch_size
    lengths = commonlit_lengths(n_rows, rng, width)
    encoded = synthetic_encoded(lengths, 30000, rng)
    targets = rng.normal(-0.96, 1.03, n_rows)
    rows = np.arange(n_rows)

    print(f"\n[1] training throughput, {steps} steps, token lengths mean {lengths.mean():.0f} (cap {width})")
    results = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    results["ftsweep"] = args.batch_size * steps / time_ftsweep(cfg, encoded, targets, rows, device, dtype, steps)[1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    results[f"plain loop (pad {width})"] = args.batch_size * steps / time_plain_loop(
        cfg, encoded, targets, rows, device, dtype, steps, width)
    if not args.skip_hf:
        results[f"HF Trainer (pad {width})"] = args.batch_size * steps / time_hf_trainer(
            cfg, encoded, targets, rows, device, dtype, steps, width)[1]
    for k, v in results.items():
        print(f"    {k:24s} {v:9.1f} samples/s")
    if not args.skip_hf:
        print(f"    ftsweep / HF Trainer     {results['ftsweep'] / results[f'HF Trainer (pad {width})']:9.2f}x")
    print(f"    ftsweep / plain loop     {results['ftsweep'] / results[f'plain loop (pad {width})']:9.2f}x")
    arch = cfg.model.architecture
    flops = train_flops_per_sample((arch.hidden_size, arch.num_hidden_layers, arch.intermediate_size), lengths.mean())
    if device.type == "cuda":
        print(f"    peak GPU memory (ftsweep) {peak:8.2f} GiB")
        print(f"    est. MFU (ftsweep)        {100 * results['ftsweep'] * flops / (H100_BF16_DENSE_TFLOPS * 1e12):8.2f} % "
              f"of {H100_BF16_DENSE_TFLOPS:.0f} TFLOP/s bf16 dense")
    else:
        print(f"    est. compute (ftsweep)    {results['ftsweep'] * flops / 1e9:8.1f} GFLOP/s (no MFU on CPU)")

    fold_rows = args.fold_rows or (96 if smoke else 2834)
    f_lengths = commonlit_lengths(fold_rows, rng, width)
    f_encoded = synthetic_encoded(f_lengths, 30000, rng)
    f_targets = rng.normal(-0.96, 1.03, fold_rows)
    fold_over = [o for o in base if not o.startswith("trainer.epochs")] + ["trainer.epochs=1"]
    epoch_s, frequent_s, n_evals, _ = fold_eval_cost(fold_over, root, f_encoded, f_targets, device, dtype)
    print(f"\n[2] one fold, 1 epoch on {fold_rows * 4 // 5} rows, validation {fold_rows - fold_rows * 4 // 5} rows")
    print(f"    eval=epoch                {epoch_s:8.2f} s")
    print(f"    eval=frequent (every 10)  {frequent_s:8.2f} s   ({n_evals} evaluations)")
    print(f"    frequent evaluation adds  {100 * (frequent_s - epoch_s) / epoch_s:+8.1f} %")

    if not args.skip_cv:
        cv_rows, cv_over = (60, ["model=tiny", "cv.n_folds=2", "trainer.epochs=1", "trainer.max_length=64"]) if smoke else (
            2834, ["model=minilm_l6", "cv.n_folds=5", "trainer.epochs=5", "trainer.batch_size=8", "trainer.max_length=320"])
        if device_is_cuda:
            cv_over.append("trainer.pad_to_multiple_of=32")
        seconds, mean_rmse = full_cv(cv_over, cv_rows, root, rng)
        print(f"\n[3] full CV: {' '.join(cv_over)} on {cv_rows} rows")
        print(f"    wall time                 {seconds:8.1f} s   (mean RMSE {mean_rmse:.3f} on random targets)")
    print(f"\noutputs in {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
