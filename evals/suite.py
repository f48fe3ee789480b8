"""What a suite is: cases as a data file (``evals/cases/{suite}.yaml``), a task that puts one case to a
subject in a fresh world, and evaluators that judge the outcome. Built on pydantic-evals: a suite
becomes a ``Dataset`` whose evaluators return named pass/fail checks, each with its reason.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_evals import Case, Dataset
from pydantic_evals.evaluators import EvaluationReason, Evaluator, EvaluatorContext

from core.errors import InputError
from evals.subjects import Outcome, Subject
from machines.job import describe_errors

if TYPE_CHECKING:
    from memory import MemoryStore

__all__ = ["CASES_DIR", "Check", "Checks", "Env", "Suite", "check"]

CASES_DIR = Path(__file__).parent / "cases"
C = TypeVar("C", bound=BaseModel)


@dataclass
class Env:
    """What every case of a run shares: a scratch folder and, when a suite needs one, a memory store."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tamc-eval-")))
    _store: MemoryStore | None = None

    def memory(self) -> MemoryStore:
        if self._store is None:
            from memory import MemoryConfig, MemoryStore

            self._store = MemoryStore(MemoryConfig(path=self.folder / "memory", write_delay_s=0.0))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def check(ok: bool, reason: str) -> EvaluationReason:
    return EvaluationReason(value=bool(ok), reason=reason)


Check = EvaluationReason
Checks = dict[str, EvaluationReason]


@dataclass
class Judge(Evaluator[Any, Outcome, Any]):
    """Runs a suite's ``judge`` on each case: named checks, each pass/fail with its reason."""

    suite: Suite[Any]

    def evaluate(self, ctx: EvaluatorContext[Any, Outcome, Any]) -> Checks:
        return self.suite.judge(ctx.inputs, ctx.output)

    def get_default_evaluation_name(self) -> str:
        return self.suite.name


class Suite(Generic[C]):
    """A named set of cases of one input type, the task that runs one, and the judge of its outcome."""

    name: ClassVar[str]
    title: ClassVar[str]
    inputs: ClassVar[type[BaseModel]]
    needs_memory: ClassVar[bool] = False

    def load(self, path: Path | None = None) -> list[tuple[str, C]]:
        """The suite's cases from its YAML file: a list of mappings, each with a unique ``name``."""
        path = path or CASES_DIR / f"{self.name}.yaml"
        try:
            raw = yaml.safe_load(path.read_text("utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read the {self.name} cases in {path}: {exc}") from None
        if not isinstance(raw, list):
            raise InputError(f"{path} must hold a list of cases")
        out: list[tuple[str, C]] = []
        for i, item in enumerate(raw):
            name = str(item.get("name", f"#{i + 1}")) if isinstance(item, dict) else f"#{i + 1}"
            try:
                out.append((name, self.inputs.model_validate({k: v for k, v in item.items() if k != "name"})))  # type: ignore[arg-type]
            except ValidationError as exc:
                raise InputError(f"{path}: case {name!r} is invalid: {describe_errors(exc)}") from None
            except AttributeError:
                raise InputError(f"{path}: case {name!r} must be a mapping of fields") from None
        if len({n for n, _ in out}) != len(out):
            raise InputError(f"{path}: case names must be unique")
        return self.expand(out)

    def expand(self, cases: list[tuple[str, C]]) -> list[tuple[str, C]]:
        """The cases as run (the adversarial suite runs each one with and without its attack)."""
        return cases

    def dataset(self, path: Path | None = None) -> Dataset[Any, Outcome, Any]:
        return Dataset(name=self.name, cases=[Case(name=n, inputs=c) for n, c in self.load(path)], evaluators=[Judge(self)])

    def run(self, subject: Subject, case: C, env: Env) -> Outcome:
        raise NotImplementedError

    def judge(self, case: C, out: Outcome) -> Checks:
        raise NotImplementedError
