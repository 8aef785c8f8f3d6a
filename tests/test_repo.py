"""The README's two commands are the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci_lines[ci_lines.index(next(line for line in ci_lines if "README test command" in line)) + 1]
    assert "python -m pytest" in command
    assert f"```bash\n{command}\n```" in readme


def test_readme_app_command_starts_the_app():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -q -e . && python app.py\n```" in readme


def test_code_is_clean_under_the_linter():
    """CI lints through the test suite: ruff with the settings in pyproject.toml."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "layercache", "app.py", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_layers_import_one_way():
    """The core imports nothing from evaluation/ or studio/, and no module imports the package root
    (docs/design.md, "Module map and data flow"); cli.py is the entry point and dispatches to every layer, and the
    old top-level paths of moved modules are re-exports of their new homes."""
    import ast

    package = ROOT / "layercache"
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).parts
        depth = len(parts) - 1   # how many `..` reach the package root from here
        tree = ast.parse(path.read_text(encoding="utf-8"))
        shim = (ast.get_docstring(tree) or "").startswith("Deprecated import path")
        core = len(parts) == 1 and path.name not in ("cli.py", "__main__.py") and not shim
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    assert not (node.level == depth + 1 and not base), f"{path}: imports the package root"
                    target = ".".join((list(parts[:-1])[:len(parts) - node.level] + [base])).strip(".")
                else:
                    assert base != "layercache", f"{path}: imports the package root"
                    target = base.removeprefix("layercache.") if base.startswith("layercache.") else ""
            elif isinstance(node, ast.Import):
                assert all(alias.name != "layercache" for alias in node.names), f"{path}: imports the package root"
                continue
            else:
                continue
            if core:
                assert not target.startswith(("evaluation", "studio")), f"{path}: the core imports {target}"
