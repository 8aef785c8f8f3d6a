"""`space.yaml`: the Hugging Face Space metadata, the models a Space serves and the app's defaults, in one file.

Spaces read only README.md's YAML front matter; `front_matter()` renders it from space.yaml, and
`python -m layercache space` prints it (paste it over the README's, or let a test compare them). The `serve:`
section (ours) names the hub models the Space serves, by registry key; the front matter's `models` (the repos the
Space card links) and `preload_from_hub` (what the Space build downloads) are rendered from it, so that they
cannot disagree with what the app loads.
"""

import inspect
from pathlib import Path

import yaml

SPACE_YAML = Path(__file__).resolve().parents[2] / "space.yaml"
# a diffusers-format repo: model_index.json, and in each component's folder its configs, weights and tokenizer files
# (never the repo root's single-file checkpoints, e.g. FLUX.1-dev's flux1-dev.safetensors, nor other folders)
COMPONENT_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")


def load(path=SPACE_YAML) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("space", "defaults")):
        raise ValueError(f"{path} must hold a `space:` mapping (Space metadata) and a `defaults:` mapping "
                         f"(app defaults)")
    return data


def defaults(path=SPACE_YAML) -> dict:
    return dict(load(path)["defaults"])


def serve(path=SPACE_YAML) -> dict:
    """space.yaml's `serve:` section, checked: {"models": [hub model keys], "default": a key,
    "step_seconds": {key: seconds}}. Every problem is a ValueError that says what to write instead."""
    from ..models.registry import MODELS

    section = load(path).get("serve") or {}
    hub = [key for key, entry in MODELS.items() if not entry.bundled]
    models = section.get("models") or []
    if not isinstance(models, list):
        raise ValueError(f"{path}: serve.models must be a list of model keys, e.g. [{', '.join(hub)}]")
    for key in models:
        if key not in hub:
            raise ValueError(f"{path}: serve.models names {key!r}, which is not a hub model; valid keys: "
                             f"{', '.join(hub)} (the bundled model is always served)")
    if len(set(models)) != len(models):
        raise ValueError(f"{path}: serve.models names a model twice: {models}")
    default = section.get("default", defaults(path)["model"])
    allowed = [*models, *(key for key, entry in MODELS.items() if entry.bundled)]
    if default not in allowed:
        raise ValueError(f"{path}: serve.default is {default!r}; it must be one of the served models or the bundled "
                         f"one: {', '.join(allowed)}")
    seconds = section.get("step_seconds") or {}
    bad = [key for key in {*models, *seconds} if key not in hub or not isinstance(seconds.get(key), (int, float))
           or seconds[key] <= 0]
    if bad:
        raise ValueError(f"{path}: serve.step_seconds needs a positive number of GPU seconds per denoising step for "
                         f"each served hub model, by key ({', '.join(hub)}); wrong or missing for "
                         f"{', '.join(sorted(bad))} (it sizes the GPU calls' durations)")
    return {"models": list(models), "default": default, "step_seconds": {k: float(v) for k, v in seconds.items()}}


def preload_entry(key: str) -> str:
    """One `preload_from_hub` line: "repo_id pattern,pattern,..." fetching only the diffusers-format files of the
    components the model's pipeline class takes (its required constructor arguments)."""
    import diffusers

    from ..models.registry import get_entry

    entry = get_entry(key)
    cls = getattr(diffusers, entry.pipeline_class)
    components = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                  if name != "self" and p.default is inspect.Parameter.empty]
    patterns = ["model_index.json", *(f"{c}/{files}" for c in sorted(components) for files in COMPONENT_FILES)]
    return f"{entry.repo_id} {','.join(patterns)}"


def metadata(path=SPACE_YAML) -> dict:
    """The Space metadata as the README's front matter holds it: space.yaml's `space:` section, plus `models` and
    `preload_from_hub` rendered from `serve.models`."""
    from ..models.registry import get_entry

    served = serve(path)["models"]
    data = dict(load(path)["space"])
    if served:
        data["models"] = [get_entry(key).repo_id for key in served]
        data["preload_from_hub"] = [preload_entry(key) for key in served]
    return data


def front_matter(path=SPACE_YAML) -> str:
    """README front matter, '---' lines included, keys in space.yaml's order."""
    body = yaml.safe_dump(metadata(path), sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
    return f"---\n{body}---\n"


def readme_front_matter(readme) -> str | None:
    """The front matter block of a README (the text between the first two '---' lines, with them)."""
    text = Path(readme).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    return None if end < 0 else text[: end + 5]


def in_sync(readme, path=SPACE_YAML) -> bool:
    """Does the README's front matter say what space.yaml says (same keys and values; layout may differ)?"""
    block = readme_front_matter(readme)
    return block is not None and yaml.safe_load(block.strip().strip("-")) == metadata(path)
