"""MEAL V2 distillation: hand-computed losses, exact cache behaviour, the discriminator's step,
teachers loaded from a real run, and a distilled run that reuses the teachers' soft targets."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_config, write_config
from sparsetrain import UserError, load_config, train
from sparsetrain.checkpoint import load_checkpoint
from sparsetrain.distill import (
    Discriminator,
    Distillation,
    SoftLabelCache,
    TeacherEnsemble,
    build_distillation,
    combined_loss,
    distill_loss,
    soft_target,
)
from sparsetrain.loading import load_model

torch.set_num_threads(1)

STUDENT = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
TARGET = [[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]


def hand_softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def hand_kd(student: list[list[float]], target: list[list[float]], t: float) -> float:
    ce = [-sum(p * math.log(q) for p, q in zip(pr, hand_softmax(sr, t), strict=True))
          for sr, pr in zip(student, target, strict=True)]
    return t * t * sum(ce) / len(ce)


@pytest.mark.parametrize(("t", "expected"), [(1.0, 1.0058682848905542),
                                             (4.0, 16.50528625554663)])
def test_distill_loss_is_t2_times_soft_cross_entropy(t: float, expected: float) -> None:
    assert hand_kd(STUDENT, TARGET, t) == pytest.approx(expected, rel=1e-12)
    got = distill_loss(torch.tensor(STUDENT), torch.tensor(TARGET), t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # bf16 autocast does not change it: logits are cast to fp32 inside
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = distill_loss(torch.tensor(STUDENT).bfloat16(), torch.tensor(TARGET), t)
    assert bf.dtype == torch.float32
    assert bf.item() == pytest.approx(distill_loss(torch.tensor(STUDENT).bfloat16().float(),
                                                   torch.tensor(TARGET), t).item(), rel=1e-6)


def test_soft_target_is_mean_of_teacher_softmaxes() -> None:
    z1, z2 = [[2.0, 0.0, -2.0], [1.0, 1.0, 1.0]], [[0.0, 1.0, 0.0], [3.0, -1.0, 0.5]]
    got = soft_target([torch.tensor(z1), torch.tensor(z2)], temperature=2.0)
    for b in range(2):
        p1, p2 = hand_softmax(z1[b], 2.0), hand_softmax(z2[b], 2.0)
        for c in range(3):
            assert got[b, c].item() == pytest.approx((p1[c] + p2[c]) / 2, rel=1e-6)
    assert got.sum(1).tolist() == pytest.approx([1.0, 1.0], rel=1e-6)
    with pytest.raises(UserError):
        soft_target([], 1.0)


def test_alpha_zero_is_pure_kd_and_alpha_one_pure_labels() -> None:
    label, kd = torch.tensor(2.345678), torch.tensor(0.123457)
    assert torch.equal(combined_loss(label, kd, 0.0), kd)
    assert torch.equal(combined_loss(label, kd, 1.0), label)
    assert combined_loss(label, kd, 0.25).item() == pytest.approx(0.25 * 2.345678 + 0.75 * 0.123457)
    with pytest.raises(UserError):
        combined_loss(label, kd, 1.5)


# -- cache and discriminator on tiny linear teachers --------------------------------------
def counting_teachers(calls: list[int], n: int = 2) -> TeacherEnsemble:
    models = []
    for k in range(n):
        torch.manual_seed(100 + k)
        m = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        m.register_forward_hook(lambda *_: calls.append(1))
        models.append(m)
    return TeacherEnsemble(models, fingerprint="f" * 64, num_classes=3)


def fake_trainer(epoch: int = 0, batch: int = 0, seed: int = 0) -> SimpleNamespace:
    return SimpleNamespace(epoch=epoch, batch_in_epoch=batch, device=torch.device("cpu"),
                           precision="fp32", train_loader=SimpleNamespace(seed=seed))


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 3, (4,), generator=g)


def student() -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_cached_targets_are_bitwise_identical_and_skip_the_teachers() -> None:
    calls: list[int] = []
    teachers, cache = counting_teachers(calls), SoftLabelCache()
    plain = Distillation(teachers, temperature=4.0)
    first, second = (Distillation(teachers, temperature=4.0, cache=cache) for _ in range(2))
    x, y = batch()
    tr = fake_trainer(epoch=3, batch=5)
    p_plain = plain.soft_targets(tr, x)
    assert len(calls) == 2  # one forward per teacher
    p_first = first.soft_targets(tr, x)
    assert len(calls) == 4 and (cache.hits, cache.misses) == (0, 1)
    p_second = second.soft_targets(tr, x)
    assert len(calls) == 4 and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(p_plain, p_first) and torch.equal(p_first, p_second)
    out = student()(x)
    label = F.cross_entropy(out, y)
    assert torch.equal(plain.loss(tr, x, y, out, label), second.loss(tr, x, y, out, label))
    assert len(calls) == 6  # the uncached callback ran the teachers again, the cached one not
    second.soft_targets(fake_trainer(epoch=3, batch=6), x)  # another batch index: a miss
    second.soft_targets(fake_trainer(epoch=3, batch=5, seed=1), x)  # another data seed
    assert len(calls) == 10 and cache.misses == 3


def test_disk_cache_round_trips_and_rejects_other_data(tmp_path: Path) -> None:
    calls: list[int] = []
    teachers = counting_teachers(calls)
    writer = Distillation(teachers, cache=SoftLabelCache(tmp_path))
    stored = []
    for i in range(2):
        x, y = batch(i)
        out = student()(x)
        writer.loss(fake_trainer(batch=i), x, y, out, F.cross_entropy(out, y))
        stored.append(writer.soft_targets(fake_trainer(batch=i), x))
    metrics: dict = {}
    writer.on_epoch_end(fake_trainer(), metrics)
    assert (metrics["kd_cache_hits"], metrics["kd_cache_misses"]) == (2, 2)
    assert len(list(tmp_path.glob("soft-*.pt"))) == 1  # one file per epoch
    calls.clear()
    reader = Distillation(teachers, cache=SoftLabelCache(tmp_path))  # a new process, say
    for i in range(2):
        assert torch.equal(reader.soft_targets(fake_trainer(batch=i), batch(i)[0]), stored[i])
    assert calls == [] and (reader.cache.hits, reader.cache.misses) == (2, 0)
    other = Distillation(teachers, cache=SoftLabelCache(tmp_path))
    with pytest.raises(UserError, match="does not match"):  # same key, other images
        other.soft_targets(fake_trainer(batch=0), batch(9)[0])
    next(tmp_path.glob("soft-*.pt")).write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        Distillation(teachers, cache=SoftLabelCache(tmp_path)).soft_targets(
            fake_trainer(batch=0), batch(0)[0])


def test_discriminator_has_the_official_shape() -> None:
    big = Discriminator(1000)  # official K = 8: 1000 -> 125 -> 15 -> 2, ReLU after each
    shapes = [tuple(m.weight.shape) for m in big.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(125, 1000), (15, 125), (2, 15)]
    assert isinstance(big.net[-1], nn.ReLU)
    small = Discriminator(10)  # floored at 8 (official 10 -> 1 -> 0 would not be a network)
    assert [m.out_features for m in small.modules() if isinstance(m, nn.Linear)] == [8, 8, 2]
    assert torch.all(big(torch.randn(5, 1000)) >= 0)


def test_discriminator_loss_is_added_to_the_students_with_the_official_sign() -> None:
    """Official MEAL V2: loss = KD + BCE(D([s; mean_t z_t]), [[1,0]]*B + [[0,1]]*B), one
    backward into the student and the discriminator, which then takes an SGD step (momentum
    0.9, no weight decay) at the student's LR."""
    teachers = counting_teachers([])
    with_d = Distillation(teachers, discriminator=True)
    without = Distillation(teachers)
    net, x, y = student(), *batch()
    out = net(x)
    label = F.cross_entropy(out, y)
    total = with_d.loss(fake_trainer(), x, y, out, label)
    t_mean = torch.stack(teachers(x)).mean(0)
    d_out = with_d.disc(torch.cat([out.detach(), t_mean]))
    target = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    by_hand = sum(
        -(t * F.logsigmoid(v) + (1 - t) * F.logsigmoid(-v))
        for t, v in zip(target.flatten().tolist(), d_out.flatten(), strict=True)) / 16
    kd = without.loss(fake_trainer(), x, y, out, label)
    assert total.item() == pytest.approx((kd + by_hand).item(), rel=1e-6)
    assert with_d.last_d_loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    ref, ref_disc = student(), copy.deepcopy(with_d.disc)
    total.backward()  # the engine's one backward
    # the student's gradient is that of KD + d_loss: it helps the discriminator
    ref_out = ref(x)
    ref_d = F.binary_cross_entropy_with_logits(ref_disc(torch.cat([ref_out, t_mean])), target)
    (distill_loss(ref_out, soft_target(teachers(x))) + ref_d).backward()
    for p, q in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    grads = [p.grad.clone() for p in with_d.disc.parameters()]
    before = [p.detach().clone() for p in with_d.disc.parameters()]
    assert all(g.abs().sum() > 0 for g in grads)
    for p, q in zip(with_d.disc.parameters(), ref_disc.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    tr = fake_trainer()
    tr.optimizer = SimpleNamespace(param_groups=[{"lr": 0.05}])
    with_d.after_optimizer_step(tr)  # first SGD step: p - lr * g (momentum buffer = g)
    for p, b, g in zip(with_d.disc.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.05 * g)
        assert p.grad is None


def test_discriminator_state_resumes_exactly_and_rejects_the_old_gan_form() -> None:
    teachers = counting_teachers([])
    a = Distillation(teachers, discriminator=True)
    x, y = batch()
    tr = fake_trainer()
    tr.optimizer = SimpleNamespace(param_groups=[{"lr": 0.1}])
    for i in range(2):
        out = student()(x)
        a.loss(fake_trainer(batch=i), x, y, out, F.cross_entropy(out, y)).backward()
        a.after_optimizer_step(tr)  # momentum state exists after two steps
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = Distillation(teachers, discriminator=True, seed=1)  # other init, overwritten by state
    b.load_state_dict(state)
    for c in (a, b):
        out = student()(x)
        c.loss(fake_trainer(batch=2), x, y, out, F.cross_entropy(out, y)).backward()
        c.after_optimizer_step(tr)
    assert all(torch.equal(p, q) for p, q in zip(a.disc.parameters(), b.disc.parameters(),
                                                 strict=True))
    old = {k: v for k, v in state.items() if k != "disc_form"}
    with pytest.raises(UserError, match="GAN form"):
        Distillation(teachers, discriminator=True).load_state_dict(old)


def test_cached_targets_keep_the_teacher_logits_for_the_discriminator() -> None:
    calls: list[int] = []
    teachers, cache = counting_teachers(calls), SoftLabelCache()
    x, _ = batch()
    first, second = (Distillation(teachers, discriminator=True, cache=cache) for _ in range(2))
    p1, z1 = first.targets(fake_trainer(), x)
    p2, z2 = second.targets(fake_trainer(), x)
    assert len(calls) == 2 and cache.hits == 1
    assert torch.equal(p1, p2) and torch.equal(z1, z2)
    assert torch.equal(z1, torch.stack(teachers(x)).mean(0))  # (2 more teacher calls)
    plain = Distillation(teachers, cache=cache)  # no discriminator: another cache entry
    assert torch.equal(plain.soft_targets(fake_trainer(), x), p1) and len(calls) == 6


# -- real checkpoints and a distilled run -------------------------------------------------
def small_run(tmp_path: Path, name: str) -> dict:
    return tiny_config(tmp_path, name=name,
                       data={"path": "synthetic:64:32", "batch_size": 32, "eval_batch_size": 32},
                       train={"epochs": 1, "max_steps": 2})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("teacher")
    cfg = load_config(write_config(tmp, small_run(tmp, "teacher")))
    train(cfg)
    return cfg.run_dir


def test_teacher_ensemble_matches_the_loaded_model(teacher_run: Path) -> None:
    last, best = teacher_run / "last.pt", teacher_run / "best.pt"
    ens = TeacherEnsemble.from_checkpoints([last], "cpu", "fp32")
    ref = load_model(load_checkpoint(last), last).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (logits,) = ens(x)
    assert torch.equal(logits, ref(x)) and not logits.requires_grad
    assert ens.num_classes == 10 and not ens.models[0].training
    assert not any(p.requires_grad for p in ens.models[0].parameters())
    inner = hashlib.sha256(last.read_bytes()).digest()
    assert ens.fingerprint == hashlib.sha256(inner).hexdigest()
    two = TeacherEnsemble.from_checkpoints([last, best]).fingerprint
    assert two != TeacherEnsemble.from_checkpoints([best, last]).fingerprint


def test_missing_or_corrupt_teacher_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        TeacherEnsemble.from_checkpoints([bad])
    with pytest.raises(UserError, match="not found"):
        TeacherEnsemble.from_checkpoints([tmp_path / "missing.pt"])


def test_distilled_runs_share_the_teachers_soft_targets(teacher_run: Path,
                                                        tmp_path: Path) -> None:
    runs = []
    for name in ("student_a", "student_b"):
        cfg = load_config(write_config(tmp_path, small_run(tmp_path, name)))
        cb = build_distillation([teacher_run / "last.pt"], cache=tmp_path / "soft",
                                channels_last=True)
        summary = train(cfg, callbacks=[cb])
        assert summary["distill"]["teachers"] == 1
        metrics = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        state = load_checkpoint(cfg.run_dir / "last.pt")["trainer"]["callbacks"]["distill"]
        assert state["n"] == 64
        runs.append(metrics)
    a, b = runs
    assert (a["kd_cache_hits"], a["kd_cache_misses"]) == (0, 2)
    assert (b["kd_cache_hits"], b["kd_cache_misses"]) == (2, 0)
    assert 0 < a["kd_loss"] < 10 and a["kd_loss"] == b["kd_loss"]
    assert a["train_loss"] == a["kd_loss"] == b["train_loss"]  # alpha = 0: KD only


def test_distilled_run_trains_the_discriminator_in_the_students_step(teacher_run: Path,
                                                                      tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, {**small_run(tmp_path, "with_d"),
                                              "distill": {"teachers": [str(teacher_run /
                                                                           "last.pt")],
                                                          "discriminator": True}}))
    summary = train(cfg)
    assert summary["distill"]["discriminator"] is True
    metrics = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["kd_d_loss"] > 0
    assert metrics["train_loss"] == pytest.approx(metrics["kd_loss"] + metrics["kd_d_loss"],
                                                  rel=1e-4)  # the student's loss includes it
    state = load_checkpoint(cfg.run_dir / "last.pt")["trainer"]["callbacks"]["distill"]
    assert state["disc_form"] == "meal_v2" and state["disc_opt"]["state"]  # it took steps
