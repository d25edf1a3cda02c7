"""Loss balancers: closed forms (static, uncertainty, DWA) and GradNorm against the paper's create_graph form."""
from __future__ import annotations

import pytest
import torch

from foundation.errors import ConfigError, TrainingError
from foundation.modalities.ultrasound.balancing import LossBalancer
from foundation.modalities.ultrasound.objective import MultiTaskObjective, MultiTaskObjectiveConfig
from tests.modalities.ultrasound._batches import mixed_batch
from tests.modalities.ultrasound._helpers import TASKS

IDS = ["a", "b", "c"]


def test_static_weights_and_absent_tasks():
    bal = LossBalancer(IDS, "static", {"b": 3.0})
    total, w = bal(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([True, True, False]))
    assert float(total) == pytest.approx(1.0 + 6.0) and w.tolist() == [1.0, 3.0, 1.0]


def test_uncertainty_closed_form_and_gradient():
    bal = LossBalancer(IDS, "uncertainty")
    with torch.no_grad():
        bal.log_var.copy_(torch.tensor([0.5, -0.2, 1.0]))
    losses = torch.tensor([1.0, 2.0, 3.0])
    present = torch.tensor([True, True, False])
    total, _ = bal(losses, present)
    s = bal.log_var.detach()
    assert float(total.detach()) == pytest.approx(float((torch.exp(-s) * losses + s)[:2].sum()))
    total.backward()
    expected = (1 - torch.exp(-s) * losses) * present
    assert torch.allclose(bal.log_var.grad, expected)


def test_dwa_weights_from_the_last_two_periods():
    bal = LossBalancer(IDS, "dwa", dwa_temperature=2.0, dwa_period=2)
    present = torch.tensor([True, True, True])
    steps = [[2.0, 4.0, 1.0], [2.0, 4.0, 1.0], [1.0, 4.0, 2.0], [1.0, 4.0, 2.0]]
    for step, losses in enumerate(steps, start=1):
        total, w = bal(torch.tensor(losses), present)
        assert torch.allclose(w, torch.ones(3))  # fewer than two closed periods: uniform
        bal.on_step_end(step)
    r = torch.tensor([0.5, 1.0, 2.0])
    assert torch.allclose(bal.weights(), 3 * torch.softmax(r / 2.0, 0).float(), atol=1e-6)
    total, w = bal(torch.tensor([1.0, 1.0, 1.0]), present)
    assert float(total) == pytest.approx(float(w.sum()))


def test_gradnorm_matches_the_create_graph_formulation():
    """Two tasks on a shared linear layer: our weight gradient equals the paper's, computed with create_graph."""
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    shared = torch.nn.Linear(5, 4)
    heads = [torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)]
    targets = [torch.randn(8, 1), torch.randn(8, 1) * 3]
    bal = LossBalancer(["t0", "t1"], "gradnorm", gradnorm_alpha=1.5)
    with torch.no_grad():
        bal.logits.copy_(torch.tensor([0.3, -0.3]))
        bal.initial_loss.copy_(torch.tensor([2.0, 5.0]))

    feats = shared(x)
    losses = torch.stack([((h(feats) - t) ** 2).mean() for h, t in zip(heads, targets)])
    norms = torch.stack([torch.autograd.grad(loss, feats, retain_graph=True)[0].norm() for loss in losses])
    total, _ = bal(losses, torch.tensor([True, True]), norms)
    ours = torch.autograd.grad(total, bal.logits, retain_graph=True)[0]

    # reference: G_t = || d(w_t L_t) / dF || with create_graph, the paper's L_grad, gradient w.r.t. the logits
    logits = bal.logits.detach().clone().requires_grad_(True)
    w = 2 * logits.softmax(0)
    G = torch.stack([torch.autograd.grad(w[i] * losses[i], feats, retain_graph=True, create_graph=True)[0].norm()
                     for i in range(2)])
    rate = losses.detach() / torch.tensor([2.0, 5.0])
    target = (G.mean() * (rate / rate.mean()) ** 1.5).detach()
    ref = torch.autograd.grad((G - target).abs().sum(), logits)[0]
    assert torch.allclose(ours, ref, atol=1e-6)
    # the network itself sees sum(w_t L_t) with the weights held fixed
    g_net = torch.autograd.grad(total, shared.weight, retain_graph=True)[0]
    g_ref = torch.autograd.grad((w.detach() * losses).sum(), shared.weight)[0]
    assert torch.allclose(g_net, g_ref, atol=1e-6)


def test_gradnorm_needs_several_tasks_and_static_weights_need_static_mode():
    bal = LossBalancer(IDS, "gradnorm")
    with pytest.raises(TrainingError, match="mixed_tasks: true"):
        bal(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([True, False, False]), torch.ones(3))
    with pytest.raises(ConfigError, match="balancing is 'dwa'"):
        LossBalancer(IDS, "dwa", {"a": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'uncertainty'"):
        LossBalancer(IDS, "uncertanty")


@pytest.mark.parametrize("mode", ["static", "uncertainty", "dwa", "gradnorm"])
def test_objective_runs_every_mode_on_a_real_model(mode):
    from foundation.modalities.ultrasound.model import UltrasoundMTL
    from tests.modalities.ultrasound._helpers import model_config

    torch.manual_seed(0)
    model = UltrasoundMTL(model_config())
    obj = MultiTaskObjective(MultiTaskObjectiveConfig(tasks=TASKS, balancing=mode, dwa_period=1))
    losses, present, _ = obj.task_losses(model, mixed_batch(S=32, per_task=1))
    assert present.all() and (losses > 0).all()
    loss, metrics = obj(model, mixed_batch(S=32, per_task=1))
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"loss_seg", "loss_cls", "loss_det", "loss_kp", "tasks_in_batch"}
    trainable = [p for p in obj.parameters()]
    assert all(p.grad is not None for p in trainable)
    obj.on_step_end(1)


def test_objective_and_model_task_tables_must_agree():
    from foundation.modalities.ultrasound.model import UltrasoundMTL
    from tests.modalities.ultrasound._helpers import model_config

    model = UltrasoundMTL(model_config())
    obj = MultiTaskObjective(MultiTaskObjectiveConfig(tasks=TASKS[:3]))
    with pytest.raises(ConfigError, match="differ from model.tasks"):
        obj(model, mixed_batch(S=32, per_task=1))


def test_absent_heads_get_zero_gradients_not_none():
    """Data-parallel ranks see different tasks; every head must join the gradient reduction."""
    from foundation.modalities.ultrasound.model import UltrasoundMTL
    from tests.modalities.ultrasound._helpers import model_config

    model = UltrasoundMTL(model_config())
    obj = MultiTaskObjective(MultiTaskObjectiveConfig(tasks=TASKS))
    batch = mixed_batch(S=64, per_task=2)
    keep = batch["task"] == TASKS.index("fetal_head")
    batch = {k: v[keep] for k, v in batch.items()}
    loss, _ = obj(model, batch)
    loss.backward()
    for tid, head in model.heads.items():
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None for g in grads), tid
        if tid != "fetal_head":
            assert all(float(g.abs().sum()) == 0.0 for g in grads), tid
