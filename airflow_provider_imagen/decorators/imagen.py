"""
``@task.imagen``: a TaskFlow function returns what to draw, and the task generates it.

The function returns the prompt (a string) or a dict of Imagen inputs (``prompt``, ``aspect_ratio``,
``person_generation``, ``model_inputs``); the task then IS an :class:`ImagenGenerateImageOperator`, with its
arguments, XComs, links, deferral and storage. Imported when a DAG that uses ``task.imagen`` is parsed, so it
imports nothing the operators module does not already need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    SET_DURING_EXECUTION,
    DecoratedOperator,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)

from airflow_provider_imagen._cloudflare.rules import chain_aspect_ratios, imagen_input_problems, model_chain
from airflow_provider_imagen.constants import IMAGEN_4
from airflow_provider_imagen.exceptions import InvalidInputError
from airflow_provider_imagen.operators import ImagenGenerateImageOperator

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from airflow.providers.common.compat.sdk import TaskDecorator
    from airflow.sdk import Context

#: The keys a returned dict may hold: the Imagen input, as ``ImagenInput`` defines it, and the model's own inputs.
INPUT_KEYS = ("prompt", "aspect_ratio", "person_generation", "model_inputs")


def imagen_inputs(returned: Any, defaults: Mapping[str, Any], chain: tuple[str, ...] = (IMAGEN_4,)) -> dict[str, Any]:
    """
    Return the Imagen input a decorated function asked for: its returned values over the decorator's arguments.

    Checked with the operator's own rules, so a bad value gets the same words as it would as an argument (the
    aspect ratio against the task's models: Nano Banana takes more than Imagen; ``model_inputs`` when the task
    runs). A returned ``model_inputs`` is laid over the decorator's, key by key.

    :param returned: what the function returned: the prompt, or a dict with some of :data:`INPUT_KEYS`.
    :param defaults: the decorator's ``aspect_ratio`` and ``person_generation`` (and ``model_inputs``: then the
        result holds it too).
    :param chain: the task's models.
    :raises InvalidInputError: naming each bad or unknown field.
    """
    from airflow_provider_imagen.models import ImagenInput

    if isinstance(returned, dict) and not all(isinstance(key, str) for key in returned):
        raise InvalidInputError(f"Invalid Imagen input: a returned dict's keys must be among {', '.join(INPUT_KEYS)}")
    values = dict(returned) if isinstance(returned, dict) else {"prompt": returned}
    merged = {**defaults, **values}
    own, given = defaults.get("model_inputs"), values.get("model_inputs")
    if isinstance(own, dict) and isinstance(given, dict):
        merged["model_inputs"] = {**own, **given}
    # An empty option means "not set", as for a rendered template; parse() refuses unknown keys by name.
    unset = {key: None for key in ("aspect_ratio", "person_generation", "model_inputs") if merged.get(key) == ""}
    merged = {**merged, **unset}
    problems = imagen_input_problems(merged.get("prompt"), merged.get("aspect_ratio"), None, chain_aspect_ratios(chain))
    if problems:
        raise InvalidInputError("Invalid Imagen input: " + "; ".join(problems))
    rest = {key: value for key, value in merged.items() if key not in ("aspect_ratio", "model_inputs")}
    checked = ImagenInput.parse(**rest)
    inputs = {"prompt": checked.prompt, "aspect_ratio": merged.get("aspect_ratio")}
    inputs["person_generation"] = checked.person_generation
    if "model_inputs" in defaults:
        inputs["model_inputs"] = merged.get("model_inputs")
    return inputs


class _ImagenDecoratedOperator(DecoratedOperator, ImagenGenerateImageOperator):
    """
    Calls the decorated function for the Imagen input, then runs :class:`ImagenGenerateImageOperator`.

    :param python_callable: the function returning the prompt or a dict of inputs.
    :param op_args: positional arguments for the function (templated).
    :param op_kwargs: keyword arguments for the function (templated).
    :param kwargs: every :class:`ImagenGenerateImageOperator` argument except ``prompt``.
    """

    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        *ImagenGenerateImageOperator.template_fields,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {**DecoratedOperator.template_fields_renderers}
    custom_operator_name: str = "@task.imagen"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "prompt" in kwargs:
            raise TypeError("@task.imagen takes the prompt from what the function returns, not as an argument")
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            prompt=SET_DURING_EXECUTION,
            **kwargs,
        )

    def execute(self, context: Context) -> str | None:
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        returned = self.python_callable(*self.op_args, **kwargs)
        defaults = {key: getattr(self, key) for key in INPUT_KEYS[1:]}
        inputs = imagen_inputs(returned, defaults, model_chain(self.model, self.fallback_models))
        if self.deferrable and isinstance(returned, dict) and returned.get("model_inputs"):
            # The trigger's event does not carry them back, so the record of the image (_task.durable) could not
            # be filed under the inputs that made it: a retry would pay for it again.
            raise InvalidInputError(
                "Invalid model_inputs: a returned dict's model_inputs cannot be used with deferrable=True; "
                "pass model_inputs to @task.imagen(...) instead"
            )
        self.prompt, self.aspect_ratio, self.person_generation, self.model_inputs = (inputs[key] for key in INPUT_KEYS)
        return ImagenGenerateImageOperator.execute(self, context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str | None:
        # Resuming after the trigger runs no execute(): the inputs the function returned come back with the
        # image (or the error, for fallback models tried here), so the record of it (_task.durable) is filed under
        # the same inputs, without calling the function again.
        image = (event.get("image") or event.get("inputs")) if isinstance(event, dict) else None
        if isinstance(image, dict):
            self.prompt = str(image.get("prompt"))
            self.aspect_ratio, self.person_generation = image.get("aspect_ratio"), image.get("person_generation")
        return ImagenGenerateImageOperator.execute_complete(self, context, event)


def imagen_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """
    Turn a function that returns what to draw into an Imagen 4 task: ``@task.imagen``.

    The task returns and pushes exactly what :class:`ImagenGenerateImageOperator` does (the image URL, or the
    stored URI for models that return bytes; XComs ``image`` and ``stored_uri``), defers, stores and maps
    (``.partial()`` / ``.expand()``) the same way. Keyword arguments are the operator's (``aspect_ratio``,
    ``person_generation``, ``output_path``, ``deferrable``, ``defer_timeout``, ``model``, ``fallback_models``,
    ``model_inputs``, ``gateway_options``, ``timeout``, ``max_retries``, ``durable``, ``regenerate``, ...) and any
    ``BaseOperator`` argument; a returned dict's values take precedence. With a file ``output_path``, an image stored
    there from the same inputs is reused without a request (the function is still called: it says what to draw); see
    :class:`ImagenGenerateImageOperator`.

    .. code-block:: python

        @task.imagen(aspect_ratio="16:9", output_path="/data/posters/{{ params.film_id }}.png")
        def poster(film: str) -> str:
            return f"A minimalist poster for {film}"

    :param python_callable: the decorated function; it returns the prompt (``str``) or a dict with
        ``prompt`` and optionally ``aspect_ratio``, ``person_generation`` and ``model_inputs`` (laid over the
        decorator's; not with ``deferrable=True``).
    """
    if kwargs.pop("multiple_outputs", None):
        raise TypeError("@task.imagen returns the image URL, so multiple_outputs=True is not supported")
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=False,  # never inferred from a "-> dict" annotation: the task returns a URL
        decorated_operator_class=_ImagenDecoratedOperator,
        **kwargs,
    )
