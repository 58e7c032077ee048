"""The dry run gives the reference's exact per-layer rates for roberta-base, offline."""

from __future__ import annotations

import pandas as pd
import pytest

from ftsweep.cv.plan import lr_table

from helpers import compose_cfg, run_cli

REL = 1e-9


def _at(table: pd.DataFrame, step: int) -> dict[str, float]:
    rows = table[table["step"] == step]
    return dict(zip(rows["layer"], rows["lr"], strict=True))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * abs(b)


def test_llrd_with_warmup_at_step_50(tmp_path):
    cfg = compose_cfg(["model=roberta_base", "optimizer=llrd", "scheduler.warmup_steps=50"], tmp_path)
    rates = _at(lr_table(cfg, 640), 50)
    assert len(rates) == 14
    for k in range(12):
        assert _close(rates[f"layer_{k}"], 3.5e-6 * 0.9 ** (11 - k))
    assert _close(rates["embeddings"], 3.5e-6 * 0.9**12) and _close(rates["head"], 3.6e-6)
    assert set(_at(lr_table(cfg, 640), 0).values()) == {0.0}


def test_grouped_llrd_with_warmup_at_step_50(tmp_path):
    cfg = compose_cfg(["model=roberta_base", "optimizer=grouped_llrd", "scheduler.warmup_steps=50"], tmp_path)
    rates = _at(lr_table(cfg, 640), 50)
    for layer in ["embeddings", "layer_0", "layer_1", "layer_2", "layer_3"]:
        assert _close(rates[layer], 1e-6)
    assert all(_close(rates[f"layer_{k}"], 1.75e-6) for k in range(4, 8))
    assert all(_close(rates[f"layer_{k}"], 3.5e-6) for k in range(8, 12))
    assert _close(rates["head"], 3.6e-6)


def test_swa_flattens_every_layer_to_its_rate_after_the_anneal(tmp_path):
    cfg = compose_cfg(["model=roberta_base", "optimizer=grouped_llrd", "scheduler.warmup_steps=50", "swa=on",
                       "swa.lr=2e-6", "swa.start_epoch=3"], tmp_path)
    table = lr_table(cfg, 640)  # 80 steps per epoch at batch 8: SWA from step 240, anneal done at 250
    assert not all(_close(v, 2e-6) for v in _at(table, 245).values())
    for step in (250, 300, 399):
        assert all(_close(v, 2e-6) for v in _at(table, step).values())


@pytest.mark.slow
def test_plan_cli_writes_csv_and_png(tmp_path):
    out = run_cli("ftsweep.plan", "model=roberta_base", "optimizer=llrd", "scheduler.warmup_steps=50",
                  f"paths.output_root={tmp_path}", cwd=tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr
    csv_path = next(tmp_path.glob("runs/*/*/lr_schedule.csv"))
    assert str(csv_path) in out.stdout and (csv_path.parent / "lr_schedule.png").stat().st_size > 10_000
    assert (csv_path.parent / "lr_at_step_50.png").stat().st_size > 10_000
    rates = _at(pd.read_csv(csv_path), 50)
    assert _close(rates["layer_11"], 3.5e-6) and _close(rates["embeddings"], 3.5e-6 * 0.9**12)
