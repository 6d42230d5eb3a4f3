"""The command-line entry points (console scripts of `pyproject.toml`): `train`,
`evaluate`, `infer`, `datasets`, and the local web demo (`web`)."""
