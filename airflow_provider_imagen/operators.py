"""Operators: render templates, call the hook, return a small JSON value. The hook does the work."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_imagen.constants import DEFAULT_CONN_ID, IMAGEN_4, MAX_IMAGE_BYTES
from airflow_provider_imagen.errors import CloudflareWorkersAIError, InvalidInputError, StorageError
from airflow_provider_imagen.links import GeneratedImageLink
from airflow_provider_imagen.rules import check_model_id, imagen_input_problems, returns_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen.hooks import CloudflareWorkersAIHook
    from airflow_provider_imagen.models import GeneratedImage


#: The longest a deferred generation may wait in the triggerer before the task fails: every attempt at the
#: longest timeout, with the longest waits between them.
DEFER_TIMEOUT = timedelta(hours=1)


def _is_literal(value: object) -> bool:
    """True for a plain string that no template will change (checked at DAG parse time)."""
    return isinstance(value, str) and "{{" not in value and "{%" not in value


def check_literal_inputs(prompt: object, aspect_ratio: object, person_generation: object, model: object) -> None:
    """
    Reject plainly wrong literal arguments when the DAG is parsed, long before a run, in the same words as
    a rendered value gets in ``execute()``.
    """
    literal = [value if _is_literal(value) else None for value in (prompt, aspect_ratio, person_generation)]
    problems = imagen_input_problems(literal[0] if literal[0] is not None else "-", literal[1], literal[2])
    if problems:
        raise InvalidInputError("Invalid Imagen input: " + "; ".join(problems))
    if _is_literal(model):
        check_model_id(model)


def _unset_if_empty(value: Any) -> Any:
    """A template that renders to ``""`` means "not set"; any other value is validated as it is."""
    return None if value == "" else value


def _identity(context: Context) -> dict[str, Any]:
    """What identifies this task instance: part of every stored image's name, so no two share one."""
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id, "map_index": ti.map_index}


class _ImagenOperatorMixin:
    """What both operators share: the hook, persisting, and the XComs and Asset events of an image."""

    cloudflare_conn_id: str
    model: str
    timeout: float | None
    max_retries: int | None
    output_path: str | ObjectStoragePath | None
    max_image_bytes: int
    outlets: Any
    log: Any

    def get_hook(self) -> CloudflareWorkersAIHook:
        """A fresh hook for this task's connection and limits."""
        from airflow_provider_imagen.hooks import CloudflareWorkersAIHook

        return CloudflareWorkersAIHook(
            cloudflare_conn_id=self.cloudflare_conn_id, timeout=self.timeout, max_retries=self.max_retries
        )

    def _check_output(self, *, folder: bool = False) -> None:
        check_model_id(self.model)
        if self.output_path is not None:
            from airflow_provider_imagen.storage import resolve_output_path

            _, is_folder = resolve_output_path(self.output_path)  # a bad path fails before anything is generated
            if folder and not is_folder:
                raise InvalidInputError(
                    f"Invalid output_path {self.output_path!s}: a batch keeps many images, so it must be a folder "
                    "(end it with '/')"
                )
        elif returns_bytes(self.model):
            raise InvalidInputError(
                f"Model {self.model!r} returns the image as bytes, not a URL: set output_path to store it"
            )

    def _store(self, image: GeneratedImage, identity: dict[str, Any]) -> str | None:
        if self.output_path is None:
            return None
        from airflow_provider_imagen.storage import store_image

        stored = store_image(
            output_path=self.output_path,
            url=image.url,
            data=image.data,
            prompt=image.prompt,
            inputs={
                "model": image.model,
                "aspect_ratio": image.aspect_ratio,
                "person_generation": image.person_generation,
                **identity,
            },
            max_bytes=self.max_image_bytes,
        )
        return str(stored)

    def _emit_asset_events(self, context: Context, stored: list[dict[str, Any]]) -> None:
        from airflow.sdk import Asset

        for outlet in self.outlets or []:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update({"images": stored})


class ImagenGenerateImageOperator(_ImagenOperatorMixin, BaseOperator):
    """
    Generate an image with Imagen 4 on Cloudflare Workers AI and return its URL.

    The URL is the task's XCom ``return_value``; a JSON summary (model, inputs, size, attempts, timing)
    is pushed under the key ``image``. The returned URL may expire: set ``output_path`` to keep the image.

    .. code-block:: python

        ImagenGenerateImageOperator(
            task_id="puppy",
            prompt="A golden retriever puppy playing in autumn leaves",
            aspect_ratio="16:9",
            output_path="/data/images/",  # optional: keep a copy
            deferrable=True,  # optional: free the worker slot while Cloudflare works
        )

    :param prompt: what to draw (templated).
    :param aspect_ratio: ``1:1``, ``3:4``, ``4:3``, ``9:16`` or ``16:9`` (templated).
    :param person_generation: ``dont_allow``, ``allow_adult`` or ``allow_all`` (templated).
    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param model: the model id (templated); ``google/imagen-4`` by default.
    :param gateway_options: AI Gateway options (templated dict): ``gateway_id``, ``cache_ttl``,
        ``skip_cache``, ``cache_key``, ``metadata``, ``request_timeout``, ``collect_log``.
    :param output_path: where to keep the image (templated): a file or a folder (ending in ``/``) as a local
        path, ``file://``, ``s3://conn_id@bucket/key``, ``gs://...`` or an ``ObjectStoragePath``. Pushes the
        XCom ``stored_uri``. Required for models that return bytes, whose stored URI is then the return value.
    :param max_image_bytes: refuse to store an image larger than this (default 100 MiB).
    :param deferrable: wait for Cloudflare in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.
    :param timeout: seconds to wait for Cloudflare; the connection's ``timeout`` (default 180) when unset.
    :param max_retries: retries of transient failures; the connection's ``max_retries`` (default 3) when unset.
    """

    template_fields: Sequence[str] = (
        "prompt",
        "aspect_ratio",
        "person_generation",
        "model",
        "gateway_options",
        "output_path",
    )
    operator_extra_links = (GeneratedImageLink(),)
    ui_color = "#f6821f"  # Cloudflare orange

    def __init__(
        self,
        *,
        prompt: str,
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        gateway_options: dict[str, Any] | None = None,
        output_path: str | ObjectStoragePath | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        timeout: float | None = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_literal_inputs(prompt, aspect_ratio, person_generation, model)
        self.prompt = prompt
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.gateway_options = gateway_options
        self.output_path = output_path
        self.max_image_bytes = max_image_bytes
        self.deferrable = deferrable
        self.timeout = timeout
        self.max_retries = max_retries

    def execute(self, context: Context) -> str | None:
        from airflow_provider_imagen.models import GatewayOptions, ImagenInput

        # Rendered templates are checked here, before anything is sent or deferred.
        ImagenInput.parse(
            prompt=self.prompt,
            aspect_ratio=_unset_if_empty(self.aspect_ratio),
            person_generation=_unset_if_empty(self.person_generation),
        )
        GatewayOptions.parse(self.gateway_options)
        self._check_output()

        if self.deferrable:
            if returns_bytes(self.model):
                raise InvalidInputError(
                    f"deferrable=True needs a model that returns a URL; {self.model!r} returns bytes"
                )
            from airflow_provider_imagen.triggers import ImagenGenerateImageTrigger

            self.defer(
                trigger=ImagenGenerateImageTrigger(
                    prompt=self.prompt,
                    aspect_ratio=_unset_if_empty(self.aspect_ratio),
                    person_generation=_unset_if_empty(self.person_generation),
                    cloudflare_conn_id=self.cloudflare_conn_id,
                    model=self.model,
                    gateway_options=self.gateway_options,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                ),
                method_name="execute_complete",
                timeout=DEFER_TIMEOUT,
            )

        with self.get_hook() as hook:
            image = hook.generate_image(
                self.prompt,
                _unset_if_empty(self.aspect_ratio),
                _unset_if_empty(self.person_generation),
                model=self.model,
                gateway_options=self.gateway_options,
            )
        return self._finish(context, image)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str | None:
        """Resume after the trigger: the same XComs as the synchronous path, or the same typed error."""
        from airflow_provider_imagen.models import GeneratedImage
        from airflow_provider_imagen.triggers import error_from_dict

        if not isinstance(event, dict) or event.get("status") != "success":
            raise error_from_dict(event.get("error") if isinstance(event, dict) else None)
        return self._finish(context, GeneratedImage.model_validate(event["image"]))

    def _finish(self, context: Context, image: GeneratedImage) -> str | None:
        try:
            stored = self._store(image, _identity(context))
        except Exception as err:
            raise _storage_failure(err, image, self.output_path) from err
        summary = {**image.to_xcom(), "stored_uri": stored}
        context["ti"].xcom_push(key="image", value=summary)
        if stored is not None:
            context["ti"].xcom_push(key="stored_uri", value=stored)
            self._emit_asset_events(context, [summary])
        self.log.info(
            "Generated a %s image with %s in %.1f s (%d attempt(s)): %s%s",
            image.aspect_ratio or "default-ratio",
            image.model,
            image.elapsed_seconds,
            image.attempts,
            image.url or "(bytes)",
            f", stored at {stored}" if stored else "",
        )
        return image.url or stored


class ImagenGenerateImagesOperator(_ImagenOperatorMixin, BaseOperator):
    """
    Generate many images in one task, concurrently over one connection pool, results in prompt order.

    Returns the list of image URLs (the stored URIs for models that return bytes). With ``output_path``
    (a folder) each image is kept there and ``stored_uri`` holds the list of stored URIs. XCom ``images``
    holds one JSON summary per prompt.

    Partial failure: by default every prompt that can finish does, then the task fails with one line per
    failed prompt and its reason. With ``fail_on_error=False`` the task succeeds, failed prompts get ``None``
    in the returned list, and XCom ``failures`` lists them.

    :param prompts: what to draw, one image each (templated).
    :param aspect_ratio: shared by every image (templated).
    :param person_generation: shared by every image (templated).
    :param max_concurrency: how many generations run at once (1..1000, default 8).
    :param fail_on_error: fail the task after the batch if any prompt failed (default) or return the failures.
    :param output_path: a folder to keep every image in (templated), as for ``ImagenGenerateImageOperator``.
    :param cloudflare_conn_id: the Cloudflare Workers AI connection.
    :param model: the model id (templated).
    :param gateway_options: AI Gateway options (templated dict).
    :param max_image_bytes: refuse to store an image larger than this (default 100 MiB).
    :param timeout: seconds to wait for each generation.
    :param max_retries: retries of transient failures, per prompt.
    """

    template_fields: Sequence[str] = (
        "prompts",
        "aspect_ratio",
        "person_generation",
        "model",
        "gateway_options",
        "output_path",
    )
    ui_color = "#f6821f"

    def __init__(
        self,
        *,
        prompts: list[str],
        aspect_ratio: str | None = None,
        person_generation: str | None = None,
        max_concurrency: int = 8,
        fail_on_error: bool = True,
        output_path: str | ObjectStoragePath | None = None,
        cloudflare_conn_id: str = DEFAULT_CONN_ID,
        model: str = IMAGEN_4,
        gateway_options: dict[str, Any] | None = None,
        max_image_bytes: int = MAX_IMAGE_BYTES,
        timeout: float | None = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(prompts, list):
            for prompt in prompts:
                check_literal_inputs(prompt, None, None, None)
        check_literal_inputs(None, aspect_ratio, person_generation, model)
        self.prompts = prompts
        self.aspect_ratio = aspect_ratio
        self.person_generation = person_generation
        self.max_concurrency = max_concurrency
        self.fail_on_error = fail_on_error
        self.output_path = output_path
        self.cloudflare_conn_id = cloudflare_conn_id
        self.model = model
        self.gateway_options = gateway_options
        self.max_image_bytes = max_image_bytes
        self.timeout = timeout
        self.max_retries = max_retries

    def execute(self, context: Context) -> list[str | None]:
        import asyncio

        from airflow_provider_imagen.triggers import error_to_dict

        self._check_output(folder=True)
        prompts = list(self.prompts) if isinstance(self.prompts, (list, tuple)) else self.prompts
        hook = self.get_hook()
        # Validation happens inside, before the first request.
        results = hook.generate_images(
            prompts,  # type: ignore[arg-type]
            _unset_if_empty(self.aspect_ratio),
            _unset_if_empty(self.person_generation),
            model=self.model,
            gateway_options=self.gateway_options,
            max_concurrency=self.max_concurrency,
        )

        identity = _identity(context)

        async def store_all() -> list[str | CloudflareWorkersAIError | None]:
            gate = asyncio.Semaphore(self.max_concurrency)

            async def store(index: int, result: Any) -> str | CloudflareWorkersAIError | None:
                if isinstance(result, CloudflareWorkersAIError):
                    return result
                async with gate:
                    try:  # fsspec writes are blocking: keep them off the loop, a few at a time
                        return await asyncio.to_thread(self._store, result, {**identity, "index": index})
                    except Exception as err:  # a storage error is this prompt's failure, not the batch's
                        return _storage_failure(err, result, self.output_path)

            return list(await asyncio.gather(*(store(index, result) for index, result in enumerate(results))))

        stored = asyncio.run(store_all()) if self.output_path is not None else [None] * len(results)

        summaries: list[dict[str, Any] | None] = []
        failures: list[dict[str, Any]] = []
        returned: list[str | None] = []
        for index, (prompt, result, where) in enumerate(zip(prompts, results, stored, strict=True)):
            error = result if isinstance(result, CloudflareWorkersAIError) else where
            if isinstance(error, CloudflareWorkersAIError):
                failures.append({"index": index, "prompt": prompt, "error": error_to_dict(error), "reason": str(error)})
                summaries.append(None)
                returned.append(None)
                continue
            assert not isinstance(result, CloudflareWorkersAIError)
            summary = {**result.to_xcom(), "stored_uri": where}
            summaries.append(summary)
            returned.append(result.url or where)  # type: ignore[arg-type]

        ti = context["ti"]
        ti.xcom_push(key="images", value=summaries)
        ti.xcom_push(key="failures", value=failures)
        if self.output_path is not None:
            ti.xcom_push(key="stored_uri", value=[s["stored_uri"] if s else None for s in summaries])
            self._emit_asset_events(context, [s for s in summaries if s])
        self.log.info("Generated %d of %d images with %s", len(prompts) - len(failures), len(prompts), self.model)
        if failures and self.fail_on_error:
            lines = "\n".join(f"  [{f['index']}] {f['prompt']!r}: {f['reason']}" for f in failures)
            raise CloudflareWorkersAIError(
                f"{len(failures)} of {len(prompts)} images failed (the others succeeded):\n{lines}"
            )
        return returned


def _storage_failure(err: Exception, image: GeneratedImage, output_path: object) -> CloudflareWorkersAIError:
    """A failed write, as a typed error that says what was kept: the image itself is still at its URL."""
    if isinstance(err, CloudflareWorkersAIError):
        return err
    kept = f"the image is still at {image.url}" if image.url else "the image bytes were not kept"
    return StorageError(f"storing the image at {output_path!s} failed ({type(err).__name__}: {err}); {kept}")
