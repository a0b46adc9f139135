"""``@task.imagen``: the function says what to draw; the task is the operator, with its XComs and rules."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from unittest import mock

import pytest
from airflow.sdk import DAG, task

from airflow_provider_imagen.decorators.imagen import _ImagenDecoratedOperator, imagen_inputs, imagen_task
from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.operators import ImagenGenerateImageOperator
from tests.conftest import register_dag


def _xcoms(dag_run, task_id: str, map_index: int = -1) -> tuple[object, dict, object]:
    ti = dag_run.get_task_instance(task_id, map_index=map_index)
    assert ti is not None and ti.state == "success", f"{task_id}[{map_index}] is {ti and ti.state}"
    pull = ti.xcom_pull
    return (
        pull(task_ids=task_id, map_indexes=map_index),
        pull(task_ids=task_id, key="image", map_indexes=map_index),
        pull(task_ids=task_id, key="stored_uri", map_indexes=map_index),
    )


def test_task_imagen_resolves_through_the_provider_info():
    assert task.imagen is imagen_task


def test_the_task_is_the_operator_with_every_argument_passed_through():
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):

        @task.imagen(aspect_ratio="16:9", output_path="/tmp/x/", deferrable=True, timeout=30, max_retries=1, retries=2)
        def draw() -> str:
            return "A lighthouse"

        op = draw().operator
    assert isinstance(op, ImagenGenerateImageOperator)
    assert (op.aspect_ratio, op.output_path, op.deferrable, op.timeout, op.max_retries, op.retries) == (
        "16:9",
        "/tmp/x/",
        True,
        30,
        1,
        2,
    )
    assert op.multiple_outputs is False  # a "-> dict" function must not unroll: the task returns the URL


def test_unknown_arguments_reach_the_operator_and_fail_there_by_name():
    # Arguments the operator gains later (durable, fallback_models) pass through unchanged; today's operator
    # refuses one it does not know, naming it, as it would without the decorator.
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)), pytest.raises(TypeError, match="no_such"):

        @task.imagen(no_such_argument=1)
        def draw() -> str:
            return "A lighthouse"

        draw()


def test_a_prompt_argument_is_refused_because_the_function_gives_it():
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)), pytest.raises(TypeError, match="prompt"):

        @task.imagen(prompt="x")
        def draw() -> str:
            return "A lighthouse"

        draw()


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ({"prompt": "a", "style": "noir"}, "Invalid Imagen input: style: unknown field"),
        ({"prompt": "a", 1: "x"}, "keys must be among prompt, aspect_ratio, person_generation"),
        ({"prompt": "a", "aspect_ratio": "2:1"}, "aspect_ratio: must be one of 1:1, 3:4, 4:3, 9:16, 16:9"),
        ({"aspect_ratio": "1:1"}, "prompt: must be a string"),
        ("   ", "prompt: must not be blank"),
        (None, "prompt: must be a string"),
        ("x" * 2001, "prompt: must be at most 2000 characters"),
        ({"prompt": "a", "person_generation": "all"}, "person_generation: must be one of dont_allow, allow_adult"),
    ],
)
def test_returned_inputs_get_the_operators_rules_and_messages(returned, message):
    with pytest.raises(InvalidInputError, match=message):
        imagen_inputs(returned, {"aspect_ratio": None, "person_generation": None})


def test_a_plainly_wrong_decorator_argument_fails_when_the_dag_is_parsed():
    with (
        DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)),
        pytest.raises(InvalidInputError, match="aspect_ratio: must be one of 1:1, 3:4, 4:3, 9:16, 16:9"),
    ):

        @task.imagen(aspect_ratio="2:1")
        def draw() -> str:
            return "A lighthouse"

        draw()


def test_returned_values_win_over_the_decorators_and_empty_means_unset():
    defaults = {"aspect_ratio": "16:9", "person_generation": "dont_allow"}
    assert imagen_inputs(" A cat ", defaults) == {
        "prompt": "A cat",
        "aspect_ratio": "16:9",
        "person_generation": "dont_allow",
    }
    assert imagen_inputs({"prompt": "A cat", "aspect_ratio": "9:16", "person_generation": ""}, defaults) == {
        "prompt": "A cat",
        "aspect_ratio": "9:16",
        "person_generation": None,
    }


def test_bad_returned_input_fails_the_task_before_any_request(imagen_emulator):
    with DAG(dag_id="t", schedule=None, start_date=datetime(2025, 1, 1)):

        @task.imagen
        def draw() -> dict:
            return {"prompt": "A cat", "size": "large"}

        op = draw().operator
    with pytest.raises(InvalidInputError, match="size: unknown field"):
        op.execute({"ti": mock.Mock(), "params": {}})
    assert imagen_emulator.api_requests == 0


def test_dag_run_returns_and_pushes_what_the_operator_does(airflow_db, imagen_emulator, tmp_path):
    with DAG(dag_id="imagen_decorator_single", schedule=None, start_date=datetime(2025, 1, 1)) as dag:

        @task
        def subject() -> str:
            return "lighthouse"

        @task.imagen(aspect_ratio="1:1", output_path=f"{tmp_path}/")
        def as_text(what: str) -> str:
            return f"A {what} at dawn, oil painting"

        @task.imagen(aspect_ratio="1:1")
        def as_dict(what: str) -> dict[str, str]:  # the dict's aspect ratio wins over the decorator's
            return {"prompt": f"A {what} at night", "aspect_ratio": "9:16", "person_generation": "dont_allow"}

        thing = subject()
        as_text(thing)
        as_dict(thing)

    dag_run = register_dag(dag).test()
    assert dag_run.state == "success"

    returned, summary, stored = _xcoms(dag_run, "as_text")
    assert returned == stored  # with output_path, the stored copy is what the task returns
    assert summary["url"].startswith(imagen_emulator.url + "/images/")
    assert summary["prompt"] == "A lighthouse at dawn, oil painting"
    assert (summary["width"], summary["height"]) == (1024, 1024)
    assert stored == summary["stored_uri"] and Path(stored.removeprefix("file://")).read_bytes()[:4] == b"\x89PNG"

    url, summary, stored = _xcoms(dag_run, "as_dict")
    assert summary["url"] == url and stored is None
    assert (summary["prompt"], summary["width"], summary["height"]) == ("A lighthouse at night", 768, 1408)
    assert summary["person_generation"] == "dont_allow"
    assert imagen_emulator.api_requests == 2
    assert imagen_emulator.token not in repr(summary)


def test_mapped_and_deferred_each_prompt_is_one_deferred_image(airflow_db, imagen_emulator, monkeypatch):
    from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

    deferred: list[str] = []
    run = ImagenGenerateImageTrigger.run

    def counting_run(self):
        deferred.append(self.prompt)
        return run(self)

    monkeypatch.setattr(ImagenGenerateImageTrigger, "run", counting_run)
    subjects = ["fox", "owl"]
    with DAG(dag_id="imagen_decorator_mapped", schedule=None, start_date=datetime(2025, 1, 1)) as dag:

        @task.imagen(deferrable=True)
        def portrait(animal: str, ratio: str) -> dict[str, str]:
            return {"prompt": f"A portrait of a {animal}", "aspect_ratio": ratio}

        portrait.partial(ratio="16:9").expand(animal=subjects)

    dag_run = register_dag(dag).test()
    assert dag_run.state == "success"
    for index, animal in enumerate(subjects):
        url, summary, _ = _xcoms(dag_run, "portrait", map_index=index)
        assert summary["url"] == url and summary["prompt"] == f"A portrait of a {animal}"
        assert (summary["width"], summary["height"]) == (1408, 768)
    assert sorted(deferred) == ["A portrait of a fox", "A portrait of a owl"]
    assert imagen_emulator.api_requests == 2


def test_decorated_operator_subclasses_both_parents():
    assert issubclass(_ImagenDecoratedOperator, ImagenGenerateImageOperator)
    assert _ImagenDecoratedOperator.custom_operator_name == "@task.imagen"
