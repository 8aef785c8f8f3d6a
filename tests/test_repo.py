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
