"""The speed switches change how fast, not what, the method computes."""

import platform

import pytest
import torch

from piggyback.data.datasets import load_task_data, make_loader
from piggyback.data.transforms import TaskTransform
from piggyback.methods.piggyback.method import mask_spec
from piggyback.methods.registry import Hyperparameters, load_method
from piggyback.methods.run import SpeedOptions, TaskRun
from piggyback.model.backbones import ArchSpec, build_task_model
from piggyback.model.checkpoints import load_checkpoint
from piggyback.model.masks import MaskRule, add_masks, masked_weights, threshold_mask
from piggyback.training.loop import TrainStep, make_optimizer, prepare_training, train_task


def _masked_model(memory_format=torch.contiguous_format):
    model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    add_masks(model.backbone, mask_spec())
    for mask in masked_weights(model.backbone).values():
        torch.nn.init.uniform_(mask.mask_real, 0.0, 0.01)  # a mask with zeros in it
    return model.to(memory_format=memory_format)


def test_channels_last_gives_the_same_mask_gradients():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    grads = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = _masked_model(memory_format)
        model.eval()
        loss = torch.nn.functional.cross_entropy(model(x.to(memory_format=memory_format)), y)
        loss.backward()
        grads.append({k: m.mask_real.grad for k, m in masked_weights(model.backbone).items()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-3, atol=1e-6)


def test_fused_optimizer_takes_the_same_step():
    steps = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
        hp = Hyperparameters.for_method("piggyback")
        method = load_method("piggyback", hp)
        run = TaskRun("resnet18", "piggyback", "digits", [], 0, hp)
        method.prepare(model, run)
        phase = method.phases(run)[0]
        optimizer = make_optimizer(method.param_groups(model, phase), hp, fused=fused)
        torch.manual_seed(1)
        for parameter in optimizer.param_groups[0]["params"]:
            parameter.grad = torch.randn_like(parameter)
        optimizer.step()
        steps.append([p.detach().clone() for p in optimizer.param_groups[0]["params"]])
    for plain, fused in zip(*steps, strict=True):
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-9)


def _train_one_epoch(data_root, state_dir, speed):
    train, test = load_task_data(data_root, TaskTransform("cropped", 32))
    model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    hp = Hyperparameters.for_method("piggyback", epochs=1)
    run = TaskRun("resnet18", "piggyback", "digits", train.classes, 0, hp)
    return train_task(
        model,
        run,
        lambda e: make_loader(train, 32, True, e),
        make_loader(test, 64, False, 0),
        state_dir,
        torch.device("cpu"),
        progress=False,
        log=lambda _: None,
        speed=speed,
    )


def test_speed_switches_are_recorded_in_the_checkpoint_and_metrics(digits_target, tmp_path):
    speed = SpeedOptions(channels_last=True, fused_optimizer=True)
    result = _train_one_epoch(digits_target, tmp_path, speed)
    recorded = {
        "amp": "off",
        "channels_last": True,
        "compile": False,
        "fused_optimizer": True,
        "tf32": False,
    }
    assert load_checkpoint(result["best_path"])["speed"] == recorded
    assert result["metrics"][0]["speed_channels_last"] is True
    assert result["metrics"][0]["speed_tf32"] is False


def test_training_runs_in_true_fp32_unless_tf32_is_asked_for():
    """PyTorch's default lets cuDNN convolutions round to TF32; training sets IEEE fp32
    for CUDA matmuls and cuDNN convolutions, or TF32 for both when asked. On the CPU
    the switch changes nothing: the same step to the bit."""
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # PyTorch's default
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 5
    steps = {}
    try:
        for tf32, expected in ((False, "ieee"), (True, "tf32")):
            model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
            hp = Hyperparameters.for_method("piggyback")
            run = TaskRun("resnet18", "piggyback", "digits", [], 0, hp)
            speed = SpeedOptions(tf32=tf32).resolve(torch.device("cpu"))
            method, forward = prepare_training(model, run, torch.device("cpu"), speed)
            assert torch.backends.cudnn.conv.fp32_precision == expected
            assert torch.backends.cuda.matmul.fp32_precision == expected
            phase = method.phases(run)[0]
            step = TrainStep.for_phase(
                model, forward, method, phase, hp, speed, torch.device("cpu")
            )
            loss, _ = step(x, y)
            masks = masked_weights(model.backbone).values()
            steps[tf32] = loss, [mask.mask_real.detach().clone() for mask in masks]
    finally:
        SpeedOptions().set_float32_precision()
    assert torch.equal(steps[False][0], steps[True][0])
    for fp32, tf32 in zip(steps[False][1], steps[True][1], strict=True):
        assert torch.equal(fp32, tf32)


def test_bf16_autocast_thresholds_in_fp32_and_keeps_the_logits_close():
    model = build_task_model(ArchSpec("resnet18"), 5, weights="random")
    add_masks(model.backbone, mask_spec())
    model.eval()
    mask = masked_weights(model.backbone)["conv1.weight"]
    torch.nn.init.uniform_(mask.mask_real, 0.0, 0.01)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        with SpeedOptions(amp="bf16").autocast(torch.device("cpu")):
            effective = model.backbone.conv1.weight
            logits = model(x)
    assert effective.dtype == torch.float32
    original = model.backbone.conv1.parametrizations.weight.original
    discrete = threshold_mask(mask.mask_real, MaskRule("binary", 5e-3))
    assert torch.equal(effective, discrete * original)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), reference, rtol=0.1, atol=0.1)


def test_cpu_defaults_fuse_the_optimiser_and_keep_freed_memory(monkeypatch):
    import argparse

    from piggyback.interface import cli
    from piggyback.machine import memory

    resolved = SpeedOptions().resolve(torch.device("cpu"))
    assert resolved.fused_optimizer and not resolved.channels_last
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(True) or True)
    args = argparse.Namespace(threads=None, device="cpu", gpu_lock_dir=None)
    assert cli.select_device(args).type == "cpu"
    assert calls == [True]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_keeping_freed_memory_is_accepted_by_glibc():
    from piggyback.machine.memory import keep_freed_memory

    assert keep_freed_memory() is True
