"""The GPU benchmark script, run on the CPU with the real model classes shrunk: it must plan, hook, sample
and report without error (its figures only mean something on a GPU)."""


import layercache.evaluation.bench_gpu as bench_gpu
from layercache import cli


def test_bench_gpu_runs_end_to_end_on_small_configs(monkeypatch, capsys):
    small = {
        "qwen-image": dict(bench_gpu.CONFIGS["qwen-image"], text_tokens=8,
                           config=dict(patch_size=2, in_channels=16, out_channels=4, num_layers=4,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       axes_dims_rope=(4, 6, 6))),
        "flux-dev": dict(bench_gpu.CONFIGS["flux-dev"], text_tokens=8,
                         config=dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                     pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))),
    }
    monkeypatch.setattr(bench_gpu, "CONFIGS", small)
    monkeypatch.setattr(bench_gpu, "IMAGE_GRID", 4)
    monkeypatch.setattr(bench_gpu, "DEVICE", "cpu")
    assert cli.main(["bench-gpu", "--steps", "8", "--groups", "2", "--budgets", "0.73,0.5"]) == 0
    out = capsys.readouterr().out
    for expected in ["== qwen-image", "== flux-dev", "FLOPs per step", "uncached", "budget 0.73", "budget 0.5"]:
        assert expected in out


def test_bench_gpu_rejects_bad_input_before_building(capsys):
    assert cli.main(["bench-gpu", "--models", "sdxl"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli.main(["bench-gpu", "--budgets", "1.5"]) == 2
    assert "budget" in capsys.readouterr().err
