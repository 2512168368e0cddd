"""Shared test setup: no test may reach the network."""

import os

import pytest

# `datasets` and `huggingface_hub` read these once at import, which can happen during test
# collection, before any fixture runs; set them here too so the first import sees them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _offline_hf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
