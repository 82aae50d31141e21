"""LARS update against its formula on a hand-computed case (official linear-probe semantics)."""
import pytest
import torch
from timm.optim import Lars

from mae.engine.lars import LARS, lars_factory


def make(w, b):
    return torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(torch.tensor(b))


def step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    opt.step()


def test_two_steps_hand_computed_wd0():
    w, b = make([[3.0, 4.0]], [1.0])  # ||w|| = 5
    opt = LARS([w, b], lr=0.1, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001)
    step(opt, [w, b], [[[0.6, 0.8]], [0.5]])  # ||g|| = 1 -> q = 0.001 * 5 / 1 = 0.005
    torch.testing.assert_close(w.data, torch.tensor([[2.9997, 3.9996]]))  # 3 - 0.1 * 0.003, 4 - 0.1 * 0.004
    torch.testing.assert_close(b.data, torch.tensor([0.95]))  # 1-d: plain momentum SGD, 1 - 0.1 * 0.5
    step(opt, [w, b], [[[0.6, 0.8]], [0.5]])  # ||w|| = 4.9995 -> q = 0.0049995
    # mu = 0.9 * [0.003, 0.004] + [0.0029997, 0.0039996] = [0.0056997, 0.0075996]
    torch.testing.assert_close(w.data, torch.tensor([[2.99913003, 3.99884004]]))
    torch.testing.assert_close(b.data, torch.tensor([0.855]))  # mu = 0.45 + 0.5


def test_weight_decay_enters_the_trust_ratio_only_for_matrices():
    w, b = make([[3.0, 4.0]], [1.0])
    opt = LARS([w, b], lr=0.1, weight_decay=0.1, momentum=0.9)
    step(opt, [w, b], [[[0.6, 0.8]], [0.5]])
    # u = g + 0.1 w = [0.9, 1.2], ||u|| = 1.5, q = 0.005 / 1.5 -> u q = [0.003, 0.004]
    torch.testing.assert_close(w.data, torch.tensor([[2.9997, 3.9996]]))
    torch.testing.assert_close(b.data, torch.tensor([0.95]))  # no weight decay on 1-d parameters


def test_zero_weight_gets_no_adaptation():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.5)
    w.grad = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    opt.step()
    torch.testing.assert_close(w.data, torch.tensor([[-0.5, 0.0], [0.0, -1.0]]))  # q = 1


def test_matches_timm_lars_always_adapt_at_wd0():
    torch.manual_seed(0)
    lin_a, lin_b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    lin_b.load_state_dict(lin_a.state_dict())
    ours = lars_factory()([{"params": list(lin_a.parameters()), "weight_decay": 0.0}], 0.1)
    theirs = Lars([{"params": [lin_b.weight], "always_adapt": True},
                   {"params": [lin_b.bias], "always_adapt": False}], lr=0.1, momentum=0.9, trust_coeff=0.001)
    for _ in range(3):
        x = torch.randn(4, 5)
        for lin, opt in ((lin_a, ours), (lin_b, theirs)):
            opt.zero_grad()
            lin(x).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(lin_a.weight, lin_b.weight)
    torch.testing.assert_close(lin_a.bias, lin_b.bias)


def test_invalid_settings():
    with pytest.raises(ValueError, match="invalid LARS"):
        LARS([torch.nn.Parameter(torch.zeros(1))], lr=-1)
