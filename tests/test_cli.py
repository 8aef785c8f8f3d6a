"""`python -m layercache`: judged by files, exit status and stderr.

Every bad input goes through `cli.main` in this process (the exact code a user's process runs, and
cheap); a few go through a real subprocess as well, which is what proves the exit status and the
absence of a traceback end to end (each subprocess pays ~5 s of torch/diffusers imports).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from layercache import cli

ROOT = Path(__file__).resolve().parents[1]

BAD_INPUTS = {
    "label above 9": (["--label", "10"], "label must be a digit 0-9"),
    "label below 0": (["--label", "-1"], "label must be a digit 0-9"),
    "label not a number": (["--label", "x"], "--label"),
    "unknown word": (["--prompt", "eleven"], "cannot read one digit"),
    "no label or prompt": ([], "exactly one of"),
    "zero steps": (["--label", "3", "--steps", "0"], "from 1 to 1000"),
    "too many steps": (["--label", "3", "--steps", "1001"], "from 1 to 1000"),
    "guidance not a number": (["--label", "3", "--guidance", "lots"], "--guidance"),
    "negative guidance": (["--label", "3", "--guidance", "-1"], "guidance_scale must be a number >= 0"),
    "negative seed": (["--label", "3", "--seed", "-1"], "seed must be >= 0"),
    "missing weights": (["--label", "3", "--weights", "{tmp}/nowhere"], "not found"),
    "corrupt weights": (["--label", "3", "--weights", "{tmp}/corrupt"], "missing or corrupt"),
    "unwritable output": (["--label", "3", "--steps", "1", "--out", "{tmp}/no/such/dir/x.png"], "cannot write"),
}
IN_SUBPROCESS = ["label above 9", "negative seed", "corrupt weights"]  # argparse, pipeline and loader errors


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    for sub in ("transformer", "label_encoder"):
        (tmp / "corrupt" / sub).mkdir(parents=True)
        (tmp / "corrupt" / sub / "config.json").write_text("{not json")
    return tmp


def generate_argv(name, tmp):
    args = [a.format(tmp=tmp) for a in BAD_INPUTS[name][0]]
    return ["generate", *args] + ([] if "--out" in args else ["--out", str(tmp / "bad.png")])


def run_in_process(argv, capsys):
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse exits by itself
        status = exit.code
    return status, capsys.readouterr().err


def assert_one_error_line(status, stderr, expected):
    assert status == 2
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert expected in stderr


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(name, tmp, capsys):
    assert_one_error_line(*run_in_process(generate_argv(name, tmp), capsys), BAD_INPUTS[name][1])
    assert not (tmp / "bad.png").exists()


def test_unknown_or_missing_command_exits_2_with_one_error_line(capsys):
    assert_one_error_line(*run_in_process(["bogus"], capsys), "invalid choice")
    assert_one_error_line(*run_in_process([], capsys), "required")


def test_as_a_process(tmp):
    """Two generate runs (bit-identical PNGs) and a few bad inputs, all as separate processes at once."""
    argv = {f"png{i}": ["generate", "--label", "7", "--seed", "5", "--steps", "4", "--out", str(tmp / f"{i}.png")]
            for i in (1, 2)}
    argv.update({name: generate_argv(name, tmp) for name in IN_SUBPROCESS})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # they run side by side on few cores
    procs = {name: subprocess.Popen([sys.executable, "-m", "layercache", *args], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, args in argv.items()}
    results = {name: (*proc.communicate(timeout=300), proc.returncode) for name, proc in procs.items()}

    for name in ("png1", "png2"):
        stdout, stderr, status = results[name]
        assert status == 0 and stderr == "", stderr
    first = (tmp / "1.png").read_bytes()
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert first == (tmp / "2.png").read_bytes()
    for name in IN_SUBPROCESS:
        stdout, stderr, status = results[name]
        assert_one_error_line(status, stderr, BAD_INPUTS[name][1])


def test_prompt_and_label_write_the_same_png(tmp, capsys):
    base = ["generate", "--seed", "5", "--steps", "2"]
    assert cli.main(base + ["--label", "7", "--out", str(tmp / "label.png")]) == 0
    assert cli.main(base + ["--prompt", "seven", "--out", str(tmp / "prompt.png")]) == 0
    assert (tmp / "label.png").read_bytes() == (tmp / "prompt.png").read_bytes()


def test_cli_imports_neither_torch_nor_diffusers():
    """`--help` must answer at once: importing the command line (and every command's arguments) loads no torch."""
    code = ("import sys, layercache.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'numpy', 'gradio') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_every_command_has_help():
    for name, *_ in cli._COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            cli.build_parser().parse_args([name, "--help"])
        assert exit_.value.code == 0


def test_explore_prints_the_heterogeneity_of_a_shipped_calibration(capsys):
    assert cli.main(["explore", "--model", "tiny", "--steps", "30", "--groups", "4"]) in (0, None)
    out = capsys.readouterr().out
    assert "Heterogeneity ratio" in out and "behave alike" in out
    assert "| 3 | 9–11 |" in out and "plain error (early)" in out


@pytest.mark.parametrize("argv, expected", [
    (["explore", "--model", "nope"], "unknown model"),
    (["explore", "--steps", "1"], "--steps must be >= 2"),
    (["explore", "--calibration", "/no/such.npz"], "not found"),
])
def test_explore_bad_input_exits_2_with_one_error_line(argv, expected, capsys):
    assert_one_error_line(*run_in_process(argv, capsys), expected)


@pytest.mark.parametrize("argv, expected", [
    (["overhead", "--model", "nope"], "unknown model"),
    (["overhead", "--model", "flux-dev"], "bundled models only"),
    (["overhead", "--model", "tiny-flux", "--steps", "17"], "calibrate-shipped --model tiny-flux --steps 17"),
    (["overhead", "--budgets", "0.5,2"], "outside (0, 1]"),
    (["overhead", "--repeats", "0"], "--repeats must be >= 1"),
])
def test_overhead_bad_input_exits_2_with_one_error_line(argv, expected, capsys):
    assert_one_error_line(*run_in_process(argv, capsys), expected)
