"""
A model id reaches the path of a request that carries the API token: every entry point refuses a malformed
one before anything is sent ("@cf/../../../../user/tokens" once sent the token to POST /user/tokens).
"""

from __future__ import annotations

from datetime import datetime
from unittest import mock

import pytest
from airflow.sdk import DAG

from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
from airflow_provider_imagen.operators import ImagenGenerateImageOperator, ImagenGenerateImagesOperator
from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

TRAVERSALS = ["@cf/../../../../user/tokens", "@cf/../../../../../user/tokens", "google/../user/tokens", "a b"]
MESSAGE = "Invalid model: expected a Workers AI model id"


def make(cls, **kwargs):
    with DAG(dag_id="ids", schedule=None, start_date=datetime(2025, 1, 1)):
        return cls(task_id="t", **kwargs)


@pytest.mark.parametrize("model", TRAVERSALS)
def test_a_literal_model_id_is_refused_when_the_dag_is_parsed(model):
    with pytest.raises(InvalidInputError, match=MESSAGE):
        make(ImagenGenerateImageOperator, prompt="a cat", model=model)
    with pytest.raises(InvalidInputError, match=MESSAGE):
        make(ImagenGenerateImagesOperator, prompts=["a cat"], model=model)


@pytest.mark.parametrize("model", TRAVERSALS)
@pytest.mark.parametrize("deferrable", [False, True])
def test_a_rendered_model_id_is_refused_before_any_request(imagen_emulator, model, deferrable):
    # e.g. model="{{ dag_run.conf['model'] }}": anyone who may trigger the DAG chooses the value.
    op = make(ImagenGenerateImageOperator, prompt="a cat", model="{{ params.model }}", deferrable=deferrable)
    op.render_template_fields({"params": {"model": model}})
    with pytest.raises(InvalidInputError, match=MESSAGE):
        op.execute({"ti": mock.Mock()})
    batch = make(ImagenGenerateImagesOperator, prompts=["a cat"], model="{{ params.model }}")
    batch.render_template_fields({"params": {"model": model}})
    with pytest.raises(InvalidInputError, match=MESSAGE):
        batch.execute({"ti": mock.Mock()})
    stats = imagen_emulator.stats()
    assert stats["api_requests"] == stats["verify_requests"] == 0


@pytest.mark.parametrize("model", TRAVERSALS)
def test_the_trigger_and_the_hook_refuse_it_too(imagen_emulator, model):
    with pytest.raises(InvalidInputError, match=MESSAGE):
        ImagenGenerateImageTrigger(prompt="a cat", model=model)
    with CloudflareWorkersAIHook() as hook, pytest.raises(InvalidInputError, match=MESSAGE):
        hook.run(model, {"prompt": "a cat"})
    assert imagen_emulator.api_requests == 0
