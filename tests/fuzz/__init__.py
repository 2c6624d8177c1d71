"""Coverage-guided fuzzing of the request decoders and config parsers (atheris): the targets in
targets.py, run by run.py; docs/testing.md, "Supply chain and fuzzing"."""
