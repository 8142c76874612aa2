"""Feature-visualization kinds (atlas/featurevis/objectives.py): the batched objectives equal torch-lucent's own
objectives on the same tensors (value and gradient; the lucent side is written here from lucent's API, not from
atlas's `Goal.lucent`), and the fast path renders every kind like the reference loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lucent.optvis import objectives as lo

from atlas.featurevis.objectives import Goal, direction_rows

LAYER, LOW = "L", "low"


def _acts(b=6, c=5, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).requires_grad_(True)
    low = torch.randn(b, 3, 2 * h, 2 * w, generator=g, dtype=torch.float64).requires_grad_(True)
    return a, low


def _grads(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def _same(atlas_goal, lucent_loss, tensors):
    """atlas's objective to maximize == -lucent's loss, and so are their gradients."""
    T = dict(zip((LAYER, LOW), tensors)).__getitem__
    ours, _ = atlas_goal.scores(T)
    theirs = lucent_loss(T)
    assert abs(ours.item() + theirs.item()) <= 1e-10 * max(1.0, abs(theirs.item()))
    for g1, g2 in zip(_grads(ours, tensors), _grads(-theirs, tensors)):
        if g1 is None or g2 is None:
            assert g1 is None and g2 is None or (g1 if g2 is None else g2).abs().max() == 0
            continue
        assert (g1 - g2).abs().max() <= 1e-10 * max(1.0, g2.abs().max().item())


@pytest.mark.parametrize("h,w", [(4, 4), (5, 5), (7, 7)])
def test_channel_and_neuron_equal_lucent(h, w):
    a, low = _acts(h=h, w=w)
    units = (0, 3, 1, 4, 2, 2)
    _same(Goal("channel", LAYER, units), lo.Objective.sum([lo.channel(LAYER, u, batch=i) for i, u in enumerate(units)]),
          [a, low])
    _same(Goal("neuron", LAYER, units), lo.Objective.sum([lo.neuron(LAYER, u, batch=i) for i, u in enumerate(units)]),
          [a, low])


def test_direction_equals_lucent():
    a, low = _acts()
    d = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    units = tuple(range(6))
    _same(Goal("direction", LAYER, units, directions=d),
          lo.Objective.sum([lo.direction(LAYER, d[i], batch=i) for i in range(6)]), [a, low])


def test_diversity_equals_lucent_per_group():
    a, low = _acts()
    units = (1, 1, 1, 4, 4, 4)

    def lucent_loss(T):  # lucent's diversity takes the whole batch: give it each unit's rows
        loss = lo.Objective.sum([lo.channel(LAYER, u, batch=i) for i, u in enumerate(units)])(T)
        for g in range(2):
            loss = loss - 0.7 * lo.diversity(LAYER)(lambda name: T(name)[3 * g:3 * g + 3])
        return loss

    _same(Goal("diversity", LAYER, units, group=3, weight=0.7), lucent_loss, [a, low])


def test_faceted_equals_lucent_channel_plus_weighted_lower_layer():
    a, low = _acts()
    w = torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    units = (0, 1, 2, 3, 4, 0)
    lucent_loss = lo.Objective.sum([lo.channel(LAYER, u, batch=i) + (2.5 * 3) * lo.channel_weight(LOW, w, batch=i)
                                    for i, u in enumerate(units)])
    _same(Goal("faceted", LAYER, units, weight=2.5, facet_layer=LOW, facet=w), lucent_loss, [a, low])


@pytest.mark.parametrize("kind", ["channel", "neuron", "direction", "diversity", "faceted"])
def test_goal_lucent_form_is_the_batched_form(kind):
    a, low = _acts()
    extra = {"direction": {"directions": torch.randn(6, 5, dtype=torch.float64)},
             "diversity": {"group": 2, "weight": 0.3},
             "faceted": {"facet_layer": LOW, "facet": torch.randn(3, dtype=torch.float64), "weight": 1.5}}
    goal = Goal(kind, LAYER, (0, 0, 2, 2, 4, 4), **extra.get(kind, {}))
    _same(goal, goal.lucent(), [a, low])


def test_goal_and_directions_are_checked():
    with pytest.raises(ValueError, match="unknown kind"):
        Goal("channels", LAYER, (0,))
    with pytest.raises(ValueError, match="groups"):
        Goal("diversity", LAYER, (0, 0, 1), group=2)
    with pytest.raises(ValueError, match=r"has 5 values.*got shape \[4\]"):
        direction_rows(np.ones(4), 5)
    with pytest.raises(ValueError, match="not all zero"):
        direction_rows(np.zeros((2, 5)), 5)
    assert direction_rows(np.ones(5), 5).shape == (1, 5)
