"""
Where durable records live: a folder (``[imagen] durable_cache_path``), or Airflow 3.3's task state store.

:mod:`~airflow_provider_imagen._task.durable` decides what a record holds and when it is read; this module only
stores JSON values by key, and never lets a storage failure fail the task (:class:`BestEffort`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_imagen._task.durable import Request

#: The provider configuration option naming the folder below Airflow 3.3.
CONFIG_SECTION, CONFIG_OPTION = "imagen", "durable_cache_path"


class Backend(Protocol):
    """Where records live: get, set and delete one JSON value by key; forget an earlier request's."""

    name: str

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def forget_earlier(self) -> None: ...


#: One task state store call at a time from this process's threads (a batch records from several). A worker's
#: channel to its supervisor serializes them anyway; ``dag.test()``'s in-process one does not, and while it answers
#: one call it removes the channel that another thread's call looks up (ImportError: SUPERVISOR_COMMS).
_ONE_CALL_AT_A_TIME = threading.Lock()


class TaskStateStore:
    """Airflow 3.3's task state store: kept across retries, dropped when a person clears the task."""

    name = "the task state store"

    def __init__(self, store: Any) -> None:
        self._store = store

    def get(self, key: str) -> Any:
        with _ONE_CALL_AT_A_TIME:
            return self._store.get(key, None)

    def set(self, key: str, value: Any) -> None:
        with _ONE_CALL_AT_A_TIME:
            self._store.set(key, value)

    def delete(self, key: str) -> None:
        with _ONE_CALL_AT_A_TIME:
            self._store.delete(key)

    def forget_earlier(self) -> None:
        # Airflow drops a task instance's state when a person clears it, which is what starts a new request: an
        # earlier request's records are gone already (or ignored: each names its request). Never clear() here:
        # the store is shared with the task's own code (a @task.imagen callable), and Airflow removes ours when
        # success is certain ([state_store] clear_on_success) or after its retention.
        pass


class ObjectStorage:
    """One JSON file per key in the task instance's folder under ``[imagen] durable_cache_path``."""

    def __init__(self, folder: ObjectStoragePath) -> None:
        from airflow_provider_imagen._task.local_folder import local_path

        self.folder = folder
        self.name = f"durable_cache_path {folder}"
        # A local folder is read and written with plain file calls: an ObjectStoragePath costs ~0.5 ms of CPU a
        # record to make and open, and a dataset writes two records a row.
        self._local = local_path(folder)
        self._made = False

    def get(self, key: str) -> Any:
        try:
            if self._local is not None:
                with open(os.path.join(self._local, f"{key}.json"), encoding="utf-8") as record:
                    return json.load(record)
            return json.loads((self.folder / f"{key}.json").read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # a write cut short: as good as no record
            return None

    def set(self, key: str, value: Any) -> None:
        text = json.dumps(value)
        if self._local is None:
            with contextlib.suppress(Exception):  # buckets have no folders to make
                self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{key}.json").write_text(text)  # one PUT: an object store never shows half an object
            return
        if not self._made:  # once, and again after forget_earlier() removed it
            os.makedirs(self._local, exist_ok=True)
            self._made = True
        # A local file is written whole under another name, then renamed over the record: a crash mid-write
        # never leaves truncated JSON, which would read as "no record" and make the retry pay again.
        final = os.path.join(self._local, f"{key}.json")
        partial = f"{final}.{uuid.uuid4().hex}.part"
        try:
            with open(partial, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / f"{key}.json").unlink()

    def forget_earlier(self) -> None:
        # The folder holds only this task instance's records: a new request means the earlier one ended.
        if self.folder.exists():
            self.folder.rmdir(recursive=True)
        self._made = False


class BestEffort:
    """
    Wrap a backend so that its failures never fail the task.

    The image this try obtained is still delivered, and only a later try's reuse is lost (the log says so once).
    """

    def __init__(self, backend: Backend, log: Any) -> None:
        self._backend = backend
        self._log = log
        self._warned = False
        self.name = backend.name

    def _failed(self, what: str, err: Exception) -> None:
        if not self._warned:
            self._warned = True
            self._log.warning(
                "Could not %s a durable record in %s (%s: %s): a retry may generate again",
                what,
                self.name,
                type(err).__name__,
                err,
            )

    def get(self, key: str) -> Any:
        try:
            return self._backend.get(key)
        except Exception as err:
            self._failed("read", err)
            return None

    def set(self, key: str, value: Any) -> None:
        try:
            self._backend.set(key, value)
        except Exception as err:
            self._failed("write", err)

    def delete(self, key: str) -> None:
        try:
            self._backend.delete(key)
        except Exception as err:
            self._failed("delete", err)

    def forget_earlier(self) -> None:
        try:
            self._backend.forget_earlier()
        except Exception as err:
            self._failed("delete", err)


def open_backend(context: Context, request: Request) -> Backend | None:
    """
    Return where ``request``'s records live: ``durable_cache_path`` when set, else the task state store (3.3+).

    A folder set by an admin wins on 3.3 too: it takes many writes at once, where the task state store's calls go
    one at a time through the worker's supervisor (a dataset of thousands of rows writes two records a row).
    """
    from airflow.configuration import conf

    root = conf.get(CONFIG_SECTION, CONFIG_OPTION, fallback=None)
    if root:
        from airflow_provider_imagen._task.storage import resolve_output_path

        base, _ = resolve_output_path(root)
        folder = base / quote(request.dag_id, safe="") / quote(request.run_id, safe="")
        return ObjectStorage(folder / quote(request.task_id, safe="") / str(request.map_index))
    store = context.get("task_state_store")  # type: ignore[call-overload]
    if store is not None and all(callable(getattr(store, name, None)) for name in ("get", "set", "delete")):
        return TaskStateStore(store)
    return None
