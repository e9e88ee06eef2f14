"""Training options on their own: the left-right flip and zoom range of augmentation, the weight average
and mixup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrtriage.train.augment import AugmentConfig, augment_batch, sample_seeds
from cxrtriage.train.trainer import weight_average

# everything off except the flip
FLIP_ONLY = dict(rotate_deg=0.0, translate=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0, gamma=0.0,
                 blur_p=0.0, noise_std=0.0)


def _batch(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.1 + 0.8 * torch.rand(n, 1, 32, 32, generator=g)


def test_hflip_one_mirrors_every_image_and_zero_none():
    x = _batch()
    seeds = sample_seeds(0, 0, torch.arange(len(x)))
    flipped = augment_batch(x, seeds, AugmentConfig(hflip_p=1.0, **FLIP_ONLY))
    kept = augment_batch(x, seeds, AugmentConfig(hflip_p=0.0, **FLIP_ONLY))
    assert torch.allclose(flipped, torch.flip(x, dims=[-1]), atol=1e-5)
    assert torch.allclose(kept, x, atol=1e-5)


def test_hflip_half_mirrors_some_images_only():
    x = _batch(64)
    out = augment_batch(x, sample_seeds(3, 1, torch.arange(len(x))), AugmentConfig(hflip_p=0.5, **FLIP_ONLY))
    mirrored = [torch.allclose(o, torch.flip(i, dims=[-1]), atol=1e-5) for o, i in zip(out, x)]
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert all(m != s for m, s in zip(mirrored, same))  # each image is one or the other
    assert 16 <= sum(mirrored) <= 48


def test_weight_average_follows_the_ramped_exponential_average():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    avg = weight_average(net, 0.9)
    seen = []
    for _ in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
        avg.update_parameters(net)
        seen.append(([p.clone() for p in net.parameters()], net[1].running_mean.clone()))
    # by hand: the first update copies; then decay d_n = min(0.9, (1 + n) / (10 + n)) for n = 1, 2, ...
    want = [p.clone() for p in seen[0][0]]
    want_rm = seen[0][1].clone()
    for n, (params, rm) in enumerate(seen[1:], start=1):
        d = min(0.9, (1 + n) / (10 + n))
        want = [w + (p - w) * (1 - d) for w, p in zip(want, params)]
        want_rm = want_rm + (rm - want_rm) * (1 - d)
    for w, a in zip(want, avg.module.parameters()):
        assert torch.allclose(w, a, atol=1e-6)
    assert torch.allclose(want_rm, avg.module[1].running_mean, atol=1e-6)  # batch-norm statistics averaged too
    assert not torch.allclose(avg.module[0].weight, net[0].weight)


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_weight_average_refuses_a_decay_outside_0_1(decay):
    with pytest.raises(ValueError, match="EMA decay"):
        weight_average(torch.nn.Linear(2, 2), decay)


def test_augment_strength_zero_leaves_images_alone_and_one_is_the_default():
    x = _batch(8)
    seeds = sample_seeds(1, 2, torch.arange(len(x)))
    assert AugmentConfig().scaled(1.0) == AugmentConfig()
    assert torch.allclose(augment_batch(x, seeds, AugmentConfig().scaled(0.0)), x, atol=1e-5)
    half = augment_batch(x, seeds, AugmentConfig().scaled(0.5))
    full = augment_batch(x, seeds, AugmentConfig())
    # same random draws, half the ranges: the change from the input shrinks
    assert 0.0 < (half - x).abs().mean() < (full - x).abs().mean()
    with pytest.raises(ValueError, match="strength"):
        AugmentConfig().scaled(-1.0)


def test_zoom_range_magnifies_and_is_kept_in_the_run_config(tmp_path):
    from cxrtriage.train.config import TrainConfig

    disc = torch.zeros(2, 1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc[:, :, ((yy - 31.5) ** 2 + (xx - 31.5) ** 2) < 10 ** 2] = 1.0
    seeds = sample_seeds(0, 0, torch.arange(2))
    cfg = TrainConfig(out_dir=str(tmp_path), zoom=(1.5, 1.5), augment_strength=0.0)
    aug = cfg.augmentation()
    assert aug.scale == (1.5, 1.5) and aug.rotate_deg == 0.0  # the zoom range overrides the strength's
    out = augment_batch(disc, seeds, aug)
    assert out.sum() / disc.sum() == pytest.approx(1.5 ** 2, rel=0.08)  # a disc 1.5x as wide
    cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json").augmentation() == aug  # a resumed run zooms the same
    assert TrainConfig(out_dir=str(tmp_path)).augmentation().scale == AugmentConfig().scale
    with pytest.raises(ValueError, match="zoom range"):
        TrainConfig(out_dir=str(tmp_path), zoom=(1.2, 0.9)).augmentation()


def test_mixup_draw_is_reproducible_and_varies_by_batch():
    from cxrtriage.train.mixup import mix_draw

    lam, perm = mix_draw(16, 0.4, seed=1, epoch=2, batch=3)
    lam2, perm2 = mix_draw(16, 0.4, seed=1, epoch=2, batch=3)
    assert lam == lam2 and torch.equal(perm, perm2)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(16))
    others = [mix_draw(16, 0.4, seed=1, epoch=2, batch=b) for b in range(4, 12)]
    assert len({round(lam_b, 6) for lam_b, _ in others}) == len(others)  # a new weight per batch
    with pytest.raises(ValueError, match="alpha"):
        mix_draw(16, 0.0, seed=1, epoch=2, batch=3)


def test_mixup_small_alpha_keeps_images_nearly_whole():
    from cxrtriage.train.mixup import mix_draw

    lams = np.array([mix_draw(8, 0.05, 0, 0, b)[0] for b in range(400)])
    assert np.mean((lams < 0.05) | (lams > 0.95)) > 0.8  # Beta(0.05, 0.05) sits at the ends
    lams = np.array([mix_draw(8, 4.0, 0, 0, b)[0] for b in range(400)])
    assert abs(lams.mean() - 0.5) < 0.03 and lams.std() < 0.2  # Beta(4, 4) near the middle


def test_mixed_batch_and_targets_are_the_same_blend():
    from cxrtriage.train.mixup import mix_images, mix_targets

    x = _batch(4)
    perm = torch.tensor([2, 0, 3, 1])
    mixed = mix_images(x, 0.7, perm)
    assert torch.allclose(mixed[0], 0.7 * x[0] + 0.3 * x[2])
    assert torch.allclose(mixed[3], 0.7 * x[3] + 0.3 * x[1])
    y = torch.tensor([[1, 0], [0, 1], [0, 0], [1, 1]])
    t = mix_targets(y, 0.7, perm)
    assert torch.allclose(t[0], torch.tensor([0.7, 0.0])) and torch.allclose(t[1], torch.tensor([0.3, 0.7]))


def test_distillation_loss_is_zero_on_the_teacher_and_pulls_the_student_to_it():
    from cxrtriage.train.distill import distill_loss

    teacher = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    assert torch.allclose(distill_loss(torch.log(teacher), teacher, 2.0), torch.zeros(2), atol=1e-6)
    logits = torch.zeros(2, 2, requires_grad=True)
    loss = distill_loss(logits, teacher, 2.0).sum()
    assert loss > 0
    loss.backward()
    step = -logits.grad  # gradient descent moves each image's logits toward its teacher's call
    assert step[0, 0] > step[0, 1] and step[1, 1] > step[1, 0]


def test_a_teacher_of_other_classes_is_refused(tmp_path):
    from cxrtriage.train.distill import teacher_probs

    with pytest.raises(ValueError, match="the task needs"):
        teacher_probs("cxr-pneumonia3", [], ("normal", "pneumonia"), str(tmp_path))
