"""`space.yaml`: the Hugging Face Space metadata and the app's defaults, in one file.

Spaces read only README.md's YAML front matter; `front_matter()` renders it from space.yaml, and
`python -m layercache space` prints it (paste it over the README's, or let a test compare them).
"""

from pathlib import Path

import yaml

SPACE_YAML = Path(__file__).resolve().parents[2] / "space.yaml"


def load(path=SPACE_YAML) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("space", "defaults")):
        raise ValueError(f"{path} must hold a `space:` mapping (Space metadata) and a `defaults:` mapping "
                         f"(app defaults)")
    return data


def defaults(path=SPACE_YAML) -> dict:
    return dict(load(path)["defaults"])


def front_matter(path=SPACE_YAML) -> str:
    """README front matter, '---' lines included, keys in space.yaml's order."""
    body = yaml.safe_dump(load(path)["space"], sort_keys=False, allow_unicode=True, default_flow_style=False)
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
    return block is not None and yaml.safe_load(block.strip().strip("-")) == load(path)["space"]

