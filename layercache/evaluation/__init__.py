"""Evaluation: the benchmark and its methods, metrics, fidelity, speed, the GPU bench and the measurement
commands (`python -m layercache <command>`). Imports the core; the core imports nothing from here."""
