"""`python -m layercache memory`: the hub models at their real configurations on the meta device, and the cache's
bound against what LayerCache's hooks really hold."""

import re

import tiny_pipelines
import torch

from layercache.calibrate import sigma_grid
from layercache.evaluation import memory
from layercache.groups import model_id, partition
from layercache.hooks import LayerCacheConfig, apply_layer_cache, remove_layer_cache
from layercache.schedule import Cell, Schedule

PUBLISHED = {  # billions of parameters, from the model cards
    ("flux-dev", "transformer"): 11.9, ("qwen-image", "transformer"): 20.4, ("sd35-medium", "transformer"): 2.5,
    ("flux-dev", "text_encoder_2 (T5-XXL)"): 4.76, ("qwen-image", "text_encoder (Qwen2.5-VL-7B)"): 8.29}


def test_memory_command_prints_consistent_numbers(capsys):
    from layercache.cli import main

    assert main(["memory"]) == 0
    out = capsys.readouterr().out
    sections = dict(re.findall(r"== (\S+)\n(.*?)(?=\n== |\nwhich card)", out, re.S))
    assert set(sections) == set(memory.MODELS)
    for key, text in sections.items():
        rows = {name.strip(): (float(b), float(gib)) for name, b, gib in
                re.findall(r"^  (\S.*?)\s+(\d+\.\d+) B parameters\s+(\d+\.\d+) GiB", text, re.M)}
        parts = [v for name, v in rows.items() if name != "all weights"]
        assert len(parts) == len(memory.MODELS[key]["components"])
        assert abs(sum(b for b, _ in parts) - rows["all weights"][0]) < 0.002
        for name, (billions, gib) in rows.items():
            assert abs(gib - billions * 1e9 * 2 / 2**30) < 0.01, (key, name)  # bf16: 2 bytes per number
            if (key, name) in PUBLISHED:
                assert abs(billions / PUBLISHED[key, name] - 1) < 0.03, (key, name, billions)
        peaks = {option: float(v) for option, v in re.findall(r"peak, (\S+(?: \S+)*?)\s+(\d+\.\d+) GiB", text)}
        assert peaks["all resident"] > rows["all weights"][1]
        assert peaks["all resident"] >= peaks["model_cpu_offload"] > peaks["sequential_cpu_offload"]
    table = out.split("which card runs which model")[1]
    assert re.search(r"ZeroGPU.*all resident\s+all resident\s+all resident", table)


def test_cache_bound_is_what_the_hooks_hold():
    """Tiny FLUX with true CFG ("cond" and "uncond" contexts): at the last step every group's log is full."""
    pipe, embeds = tiny_pipelines.flux()
    pipe.set_progress_bar_config(disable=True)
    steps, groups, k = 6, 2, 3
    transformer = pipe.transformer
    layout = partition(transformer, groups)
    schedule = Schedule.all_compute(model_id(transformer), sigma_grid(pipe, embeds, steps), layout)
    schedule.cells[-1] = [Cell(False, "slope", k)] * groups   # the largest K sets how many residuals each log keeps
    seen = []

    def measure(pipe, step, timestep, tensors):
        seen.append(memory.measured_cache_bytes(transformer))  # before the pipeline resets the hooks' state
        return {}

    apply_layer_cache(transformer, LayerCacheConfig(schedule))
    try:
        latents = pipe(**embeds, num_inference_steps=steps, output_type="latent", callback_on_step_end=measure).images
    finally:
        remove_layer_cache(transformer)
    text_tokens, image_tokens = embeds["prompt_embeds"].shape[1], latents.shape[1]
    bound = memory.cache_bound(contexts=2, groups=groups, k=k, batch=1, tokens=image_tokens + text_tokens,
                               width=transformer.inner_dim, dtype_bytes=torch.float32.itemsize)
    assert max(seen) == seen[-1] == bound
