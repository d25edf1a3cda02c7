import pytest

from foundation.pretrain.run_log import RunLog, read_jsonl


def test_log_curves_resume_and_tensorboard(tmp_path):
    log = RunLog(tmp_path, "t", tensorboard=True)
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step, "lr": 0.1 * step})
    assert log.plot().stat().st_size > 0
    log.close()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert any((tmp_path / "tensorboard").iterdir())
    # a resumed run from step 3 drops the lines the crashed run wrote after its checkpoint
    again = RunLog(tmp_path, "t", resume_step=3)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    again.log({"step": 4, "loss": 0.2, "lr": 0.4})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_fresh_log_starts_empty(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "loss": 1, "lr": 1}\n')
    log = RunLog(tmp_path, "t")
    assert log.plot() is None and read_jsonl(tmp_path / "metrics.jsonl") == []


def _tb_steps(folder) -> list[int]:
    """Steps of the ``loss`` scalar as TensorBoard reads the event files (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.step for e in acc.Scalars("loss")]


def test_resume_purges_tensorboard_events_past_the_resumed_step(tmp_path):
    log = RunLog(tmp_path, "t", tensorboard=True)
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step, "lr": 0.1})
    log.close()
    again = RunLog(tmp_path, "t", tensorboard=True, resume_step=3)
    for step in (4, 5):
        again.log({"step": step, "loss": 10.0 * step, "lr": 0.1})
    again.close()
    assert _tb_steps(tmp_path / "tensorboard") == [1, 2, 3, 4, 5]  # not 1..5 then 4, 5 again


def test_curves_show_each_loss_component_and_no_counters():
    from foundation.pretrain.run_log import loss_components, smooth

    records = [{"step": s, "loss": 1.0 / s, "recon": 0.6 / s, "stats": 0.4 / s, "visible": 0.5, "loss_cls": 0.1,
                "tasks_in_batch": 7.0, "lr": 1e-3} for s in range(1, 6)]
    assert loss_components(records) == ["recon", "stats", "loss_cls"]
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no ramp from zero
