"""Serving engines (vLLM) run from their own venv as subprocesses: exported drafts checked in the engine."""
