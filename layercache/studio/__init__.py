"""The app's machinery: the lockstep runner, the workbench (models, calibrations, plans), figures and the
Space metadata. `app.py` at the repository root is the Gradio layer on top. Imports the core and
`evaluation.metrics`; the core imports nothing from here."""
