"""Callers of the run besides the CLI: the web page (:mod:`.ui`) and the batch runner (:mod:`.batch`)."""
