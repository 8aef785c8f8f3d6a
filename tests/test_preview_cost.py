"""`python -m layercache preview-cost`, run on the CPU with the real model classes shrunk: it must time, scale and
report without error (its figures only mean something at the real sizes)."""

import pytest
import torch

import layercache.evaluation.bench_gpu as bench_gpu
import layercache.evaluation.preview_cost as preview_cost
from layercache import cli

SMALL = {
    "qwen-image": dict(bench_gpu.CONFIGS["qwen-image"], text_tokens=8,
                       config=dict(patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))),
    "flux-dev": dict(bench_gpu.CONFIGS["flux-dev"], text_tokens=8,
                     config=dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                 pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))),
}


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(bench_gpu, "CONFIGS", SMALL)
    monkeypatch.setattr(preview_cost, "FULL_GRID", 8)


def test_preview_cost_runs_end_to_end_on_small_configs(small, capsys):
    threads = torch.get_num_threads()
    try:
        assert cli.main(["preview-cost", "--grid", "4", "--repeats", "2", "--step-repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for expected in ["preview of one lane", "flux-dev", "qwen-image", "sd35-medium", "image (16, 16, 3)",
                     "transformer_blocks", "single_transformer_blocks", "x 2 call(s)", "preview / step"]:
        assert expected in out


def test_step_estimate_counts_the_real_blocks_and_scales_only_by_tokens(small):
    step = preview_cost.step_seconds("flux-dev", 8, "cpu", torch.float32, 1)  # at the full grid: no scaling
    assert [(k["kind"], k["count"]) for k in step["kinds"]] == [("transformer_blocks", 2),
                                                                 ("single_transformer_blocks", 3)]
    assert all(k["seconds_full"] == pytest.approx(k["seconds_as_run"]) for k in step["kinds"])
    per_call = sum(k["seconds_full"] * k["count"] for k in step["kinds"]) + step["other_full"]
    assert step["calls"] == 1 and step["step"] == pytest.approx(per_call)
    smaller = preview_cost.step_seconds("qwen-image", 4, "cpu", torch.float32, 1)
    assert smaller["calls"] == 2 and smaller["kinds"][0]["count"] == 4
    assert smaller["kinds"][0]["seconds_full"] > smaller["kinds"][0]["seconds_as_run"]  # 4x the tokens


def test_preview_cost_rejects_bad_input(capsys):
    assert cli.main(["preview-cost", "--grid", "65"]) == 2
    assert "--grid" in capsys.readouterr().err
    assert cli.main(["preview-cost", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err
