"""
Every Python sample in the documentation runs, against the emulator, as a reader would paste it.

The samples are the ```python blocks of ``README.md`` and ``docs/**/*.md``. An HTML comment on the line
before a block says how to check it (invisible on the rendered page):

- no marker: run as a module, with ``cloudflare_workers_ai_default`` pointing at the emulator (hook samples);
- ``<!-- docs-test: run-dag -->``: run as a module, then run every DAG it defines with ``dag.test()``;
- ``<!-- docs-test: in-dag -->``: operator lines that belong inside a DAG: run inside ``with DAG(...)``, so
  the operators are built and their literal arguments checked as at parse time; ``in-dag run`` also runs
  that DAG with ``dag.test()``;
- ``<!-- docs-test: pytest -->``: a pytest module: run it, then call each ``test_*`` function with the
  ``imagen_emulator`` fixture;
- ``<!-- docs-test: skip REASON -->``: only compiled, for a sample that cannot run here; REASON is required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import REPO, register_dag

if TYPE_CHECKING:
    from pathlib import Path

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(?P<mode>[\w-]+)(?P<rest>[^>]*?)\s*-->")
FENCE = re.compile(r"^(?P<indent>\s*)```python\s*$")
MODES = {"run", "run-dag", "in-dag", "pytest", "skip"}


@dataclass(frozen=True)
class Sample:
    """One ```python block: where it is, how to check it, and its code."""

    path: Path
    line: int
    mode: str
    option: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def _samples() -> list[Sample]:
    samples = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            fence = FENCE.match(lines[index])
            if not fence:
                index += 1
                continue
            start, indent = index, len(fence["indent"])  # a block in a list item is indented
            end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("```"))
            before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
            found = MARKER.search(before)
            mode, option = (found["mode"], found["rest"].strip()) if found else ("run", "")
            code = "\n".join(line[indent:] for line in lines[start + 1 : end]) + "\n"
            samples.append(Sample(path, start + 1, mode, option, code))
            index = end + 1
    return samples


SAMPLES = _samples()


def test_the_docs_have_samples_and_every_marker_is_known():
    assert len(SAMPLES) >= 10
    for sample in SAMPLES:
        assert sample.mode in MODES, f"{sample.name}: unknown docs-test mode {sample.mode!r}"
        if sample.mode == "skip":
            assert sample.option, f"{sample.name}: a skipped sample must say why it cannot run"


def test_the_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.mode == "skip"], ids=lambda s: s.name)
def test_samples_that_cannot_run_here_still_compile(sample: Sample):
    compile(sample.code, sample.name, "exec")


def _run(sample: Sample, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    namespace = {"__name__": f"docs_sample_{sample.line}"} if namespace is None else namespace
    exec(compile(sample.code, sample.name, "exec"), namespace)
    return namespace


def _test(dag: Any) -> Any:
    dag_run = register_dag(dag).test()
    assert dag_run.state == "success", f"{dag.dag_id} ended {dag_run.state}"
    return dag_run


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s.mode != "skip"], ids=lambda s: s.name)
def test_sample_runs_against_the_emulator(sample: Sample, imagen_emulator, airflow_db, fast_backoff, monkeypatch):
    from airflow.sdk import DAG

    # The DAG of "Getting started" saved in a DAGs folder of the reader's, as that page says to: the pytest
    # sample of "Testing offline" loads it from there.
    dags_folder = airflow_db / "reader-dags"
    dags_folder.mkdir(exist_ok=True)
    first = next(s for s in SAMPLES if s.path.name == "getting-started.md" and s.mode == "run-dag")
    (dags_folder / "my_first_image.py").write_text(first.code, encoding="utf-8")

    if sample.mode == "in-dag":
        with DAG(dag_id=f"docs_{sample.path.stem}_{sample.line}".replace("-", "_"), schedule=None) as dag:
            _run(sample)
        assert dag.task_dict, f"{sample.name} built no task"
        if sample.option == "run":
            _test(dag)
            assert imagen_emulator.generations >= 1
        return

    if sample.mode == "pytest":
        monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder))
    # A DAG file need not keep its DAG in a name (``with DAG(...):``): note each DAG as its block opens.
    dags: list[Any] = []
    enter = DAG.__enter__
    monkeypatch.setattr(DAG, "__enter__", lambda self: (dags.append(self), enter(self))[1])
    namespace = _run(sample)
    monkeypatch.setattr(DAG, "__enter__", enter)
    if sample.mode == "run-dag":
        assert dags, f"{sample.name} defines no DAG"
        for dag in dags:
            _test(dag)
        assert imagen_emulator.generations >= len(dags)
    elif sample.mode == "pytest":
        tests = [value for name, value in namespace.items() if name.startswith("test_") and callable(value)]
        assert tests, f"{sample.name} defines no test"
        for test in tests:
            imagen_emulator.reset()
            test(imagen_emulator)
