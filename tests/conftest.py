"""Shared fixtures: a seeded random tiny llama (fast) and the real default model (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import os

import pytest

from refengine.convert import default_model_dir
from refengine.model import load_model
from tiny_model import write_tiny_llama


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory):
    """Servers the tests start keep their sessions here (the variable reaches their subprocesses), never in
    the user's own state folder."""
    folder = tmp_path_factory.mktemp("refengine-state")
    previous = os.environ.get("REFENGINE_STATE")
    os.environ["REFENGINE_STATE"] = str(folder)
    yield folder
    if previous is None:
        del os.environ["REFENGINE_STATE"]
    else:
        os.environ["REFENGINE_STATE"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2_dir():
    """Converted once into the user's cache (as `refengine` itself does), then reused."""
    return default_model_dir(progress=False)


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    return load_model(smollm2_dir)
