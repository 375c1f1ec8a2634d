"""PPO maths against values worked out by hand (the arithmetic is written next to each expectation)."""

from __future__ import annotations

import math

import pytest
import torch

from zero_chatgpt.model.ppo.maths import (
    adaptive_kl_coef,
    gae_advantages,
    kl_shaped_rewards,
    masked_mean,
    policy_loss,
    token_entropy,
    value_loss,
    whiten,
)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_masked_mean_ignores_masked_positions():
    assert masked_mean(t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])).item() == pytest.approx(2.0)


def test_whiten_by_hand():
    # masked values 1, 2, 3: mean 2, population variance 2/3 -> (x - 2) / sqrt(2/3); the masked 100 -> 0.
    out = whiten(t([[1.0, 2.0, 3.0, 100.0]]), t([[1, 1, 1, 0]]))
    s = math.sqrt(2 / 3)
    assert out.tolist()[0] == pytest.approx([-1 / s, 0.0, 1 / s, 0.0], abs=1e-5)


def test_kl_shaped_rewards_by_hand():
    scores = t([1.0, 10.0])
    logprobs = t([[-1.0, -2.0, -3.0], [-0.5, -1.0, 0.0]])
    ref_logprobs = t([[-1.5, -2.0, -2.0], [-1.0, -1.0, -5.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1, reward_clip=5.0)
    # kl = logprobs - ref on the mask: row 0 [0.5, 0, -1]; row 1 [0.5, 0, masked -> 0]
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, -1.0])
    assert kl[1].tolist() == pytest.approx([0.5, 0.0, 0.0])
    # -0.1 * kl, plus the score on the last real token: row 0: 0.1 + 1 = 1.1 at t=2;
    # row 1: its score 10 is clipped to 5 and lands at t=1 (its last real token), t=2 stays 0.
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.0, 1.1])
    assert rewards[1].tolist() == pytest.approx([-0.05, 5.0, 0.0])


def test_gae_by_hand():
    rewards = t([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    values = t([[0.5, 0.2, 0.4], [1.0, 0.5, 7.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, gae_lambda=0.5)
    # row 0 (gamma * lambda = 0.45):
    #   t=2: delta = 1 + 0 - 0.4 = 0.6                      A = 0.6
    #   t=1: delta = 0 + 0.9 * 0.4 - 0.2 = 0.16             A = 0.16 + 0.45 * 0.6 = 0.43
    #   t=0: delta = 0 + 0.9 * 0.2 - 0.5 = -0.32            A = -0.32 + 0.45 * 0.43 = -0.1265
    assert advantages[0].tolist() == pytest.approx([-0.1265, 0.43, 0.6], abs=1e-6)
    assert returns[0].tolist() == pytest.approx([0.3735, 0.63, 1.0], abs=1e-6)
    # row 1 ends at t=1: the padded reward 99 and value 7 count for nothing.
    #   t=1: delta = 2 + 0.9 * 0 - 0.5 = 1.5                A = 1.5
    #   t=0: delta = 0 + 0.9 * 0.5 - 1 = -0.55              A = -0.55 + 0.45 * 1.5 = 0.125
    assert advantages[1].tolist() == pytest.approx([0.125, 1.5, 0.0], abs=1e-6)
    assert returns[1].tolist() == pytest.approx([1.125, 2.0, 0.0], abs=1e-6)


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    rewards, values, mask = t([[1.0, 2.0, 3.0]]), t([[0.5, 0.5, 0.5]]), t([[1, 1, 1]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, gae_lambda=1.0)
    assert returns[0].tolist() == pytest.approx([6.0, 5.0, 3.0])
    assert advantages[0].tolist() == pytest.approx([5.5, 4.5, 2.5])


def test_policy_loss_by_hand():
    old = t([[-1.0, -1.0, -1.0, -1.0]])
    new = old + torch.log(t([[1.5, 0.5, 1.1, 50.0]]))
    advantages = t([[1.0, -1.0, 2.0, 100.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = policy_loss(new, old, advantages, mask, clip_range=0.2)
    # t0: ratio 1.5, A  1: max(-1.5, -1.2) = -1.2 (clipped)
    # t1: ratio 0.5, A -1: max( 0.5,  0.8) =  0.8 (clipped)
    # t2: ratio 1.1, A  2: max(-2.2, -2.2) = -2.2
    # t3 is masked out; mean over 3 tokens = -2.6 / 3
    assert loss.item() == pytest.approx(-2.6 / 3, abs=1e-5)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    # approx_kl = mean(old - new) = -(ln 1.5 + ln 0.5 + ln 1.1) / 3
    assert stats["approx_kl"].item() == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3, abs=1e-5)


def test_policy_loss_gradient_pushes_up_positive_advantage():
    old = t([[-1.0, -1.0]])
    new = old.clone().requires_grad_(True)
    loss, _ = policy_loss(new, old, t([[1.0, -1.0]]), t([[1, 1]]), clip_range=0.2)
    loss.backward()
    # minimising the loss raises the log prob of the advantaged token, lowers the other
    assert new.grad[0, 0] < 0 < new.grad[0, 1]


def test_value_loss_by_hand():
    values = t([[1.0, 0.0, 2.0, 9.0]])
    old_values = t([[0.5, 0.1, 2.0, 0.0]])
    returns = t([[2.0, 0.0, 1.0, 0.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_range=0.2)
    # t0: clipped value 0.5 + 0.2 = 0.7: max((1-2)^2, (0.7-2)^2) = max(1, 1.69) = 1.69 (clipped)
    # t1: clipped value 0.1 - 0.1 = 0.0: max(0, 0) = 0
    # t2: unchanged: max(1, 1) = 1
    # loss = 0.5 * (1.69 + 0 + 1) / 3
    assert loss.item() == pytest.approx(0.5 * 2.69 / 3, abs=1e-6)
    assert stats["value_clip_fraction"].item() == pytest.approx(1 / 3)


def test_adaptive_kl_coef_by_hand():
    # error clipped to +0.2: 0.1 * (1 + 0.2 * 32 / 10000) = 0.100064
    assert adaptive_kl_coef(0.1, observed_kl=9.0, target_kl=6.0, num_rollouts=32, horizon=10000) == pytest.approx(
        0.100064
    )
    # error -0.5 clipped to -0.2: 0.1 * (1 - 0.00064)
    assert adaptive_kl_coef(0.1, observed_kl=3.0, target_kl=6.0, num_rollouts=32, horizon=10000) == pytest.approx(
        0.099936
    )
    # on target: unchanged
    assert adaptive_kl_coef(0.1, observed_kl=6.0, target_kl=6.0, num_rollouts=32, horizon=10000) == pytest.approx(0.1)


def test_token_entropy_uniform_and_peaked():
    logits = torch.zeros(1, 2, 4)
    logits[0, 1, 0] = 1e4
    entropy = token_entropy(logits)
    assert entropy[0, 0].item() == pytest.approx(math.log(4))
    assert entropy[0, 1].item() == pytest.approx(0.0, abs=1e-6)
