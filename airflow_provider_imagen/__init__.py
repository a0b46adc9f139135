"""
Apache Airflow provider for Google's Imagen 4 on Cloudflare Workers AI.

Key paths (public packages first; names starting with ``_`` are private)::

    airflow_provider_imagen/
        hooks/cloudflare.py       the hook: an Airflow connection, and the calls made through it
        operators/                what the operators do: check the rendered inputs, then run one try
            base.py               the parameters the operators share, documented once, and the hook they use
            image.py              one prompt, one image, optionally deferred to the triggerer
            batch.py              many prompts in one task, concurrently, results in prompt order
            dataset.py            keyed rows of a table or file, each stored as <key>.<ext>, rerun incrementally
            links.py              the "Generated image" button on a task in the Airflow UI
        triggers/imagen.py        the deferred generation, in the triggerer's event loop
        decorators/imagen.py      ``@task.imagen``: a TaskFlow function returns what to draw
        exceptions.py             the exceptions a caller can branch on, under one root
        retry_policy.py           between tries (Airflow 3.3+): fail at once, wait longer, or use ``retries``
        models.py                 the typed shapes of what goes to Cloudflare and what comes back
        constants.py              plain constants, importable at DAG-parse time
        get_provider_info.py      the provider metadata Airflow discovers
        _metrics.py               the provider's metrics and traces, emitted through Airflow's Stats and OpenTelemetry
        _cloudflare/              the wire: validated input to Cloudflare's parsed answer, nothing about tasks
            settings.py           the connection, validated, and the request built from it
            connection_form.py    the fields the Airflow UI shows for the connection
            call.py               one call: sent, re-sent as retry.py decides, at the pace pacing.py keeps
            transport.py          the HTTP transport, and httpx's errors mapped to the provider's
            network.py            which proxy each request takes, and which CAs TLS trusts
            clients.py            one pooled async client per connection and event loop, shared by triggers
            response.py           every answer Cloudflare can give, parsed into a result or an exception
            retry.py              where retries are decided: what, how long, and when a re-send could bill twice
            pacing.py             the account's rate limit, learned from refusals, shared per process
            fallback.py           the walk along a model chain when a model is unavailable
            batch.py              many calls at a bounded concurrency, each failure its own item's
            verify.py             the connection test (the UI's Test button)
            rules.py              input checks shared by parse time and run time
            catalog.py            the text-to-image models Workers AI serves (text_to_image_models.json)
            catalog_data.py       reading and checking the catalog's data file, on first use
            catalog_inputs.py     a model's own inputs, checked against its schema and shaped into a request
            prices.py             what an image costs: the connection's prices over the catalog's published ones
        _task/                    one try of a task, around the hook
            job.py                one try: reuse what earlier tries paid for, generate the rest, store, account
            durable.py            the records of what a task instance paid for, kept across its tries
            spend.py              the images' estimated cost, and max_cost_usd: a hard stop, reserved per generation
            record_stores.py      where those records live: the task state store, or an ObjectStorage folder
            storage.py            store an image atomically, named after its inputs; keep bytes until stored
            download.py           fetch an image from its URL: streamed, capped, never from a private address
            egress.py             the way out for image downloads: proxy, CAs, no proxy resolving a host for us
            dataset.py            a dataset's items read streaming, its run, and its manifest
            keyed.py              keyed images in a folder: one listing, sidecars recording what made each
            keyed_batch.py        a batch of keyed items: the dataset's rows and rule, results keyed by key
            stored_file.py        a file output_path: reused when its sidecar names the same inputs, else replaced
            lineage.py            the stored images as OpenLineage output datasets
        plugins/                  the Airflow UI plugin: an "Images" view of each DAG run and task instance
        emulator/                 an offline emulator of the Cloudflare API, for laptops, CI and tests

Where is the wire? :mod:`~airflow_provider_imagen._cloudflare`. Where are retries decided? Within a try,
:mod:`~airflow_provider_imagen._cloudflare.retry`; between tries, :mod:`~airflow_provider_imagen.retry_policy`.
What does an operator do? It checks its rendered inputs (:mod:`~airflow_provider_imagen.operators`) and runs
one try in :mod:`~airflow_provider_imagen._task.job`.
"""

from __future__ import annotations

__version__ = "0.1.0"
