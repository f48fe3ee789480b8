"""How a machine reaches a language model: the setting, the model it builds, and the loop it runs on.

A model is named by configuration: ``rules`` (no model, the default), a pydantic-ai model string
(``openai-chat:gpt-4o-mini``, ``anthropic:…``, ``test``), a model name served at an
OpenAI-compatible base URL (Ollama, vLLM, LM Studio) with an optional key, or ``local`` /
``local:1.5b``: TAMC's own local model (``agents.local_model``), started if none is serving. Model calls run on one
background asyncio loop per process, so the threads that must never wait (the hub, the mailboxes)
hand work to it and carry on. Heavy imports stay inside functions: the CLI must start fast.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from core.errors import InvalidModelConfig

if TYPE_CHECKING:
    from pydantic_ai.models import Model

__all__ = ["BackgroundLoop", "ModelConfig", "build_model", "shared_loop", "transient_errors"]

T = TypeVar("T")


class ModelConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str = "rules"
    """``rules``, a pydantic-ai model string, or the model's name at ``base_url``."""
    base_url: str | None = None
    """An OpenAI-compatible endpoint, e.g. ``http://localhost:11434/v1`` (Ollama)."""
    api_key: SecretStr | None = None
    fast_path: bool = True
    """Routine jobs inside policy skip the model (see ``MachineAgent.is_routine``)."""
    routine_max_price: int = Field(default=50_000_000, ge=0)
    """A job the rules would price at or under this (micro-units), with no free text, is routine."""
    chat_timeout_s: float = Field(default=60.0, gt=0)
    chat_style: Literal["auto", "tools", "briefed"] = "auto"
    """``tools``: every question goes to the model with the machine's tools. ``briefed``: a question
    the tools' briefing covers (``agents.chat.briefing``) is answered in words from it, in one request
    without tools; others still get the tools. ``auto``: briefed for TAMC's local models (``local``),
    whose tool loops wander, tools for any other."""

    @property
    def uses_model(self) -> bool:
        return self.model != "rules"

    @property
    def local(self) -> bool:
        """TAMC's own local model (``tamc model serve``): slow to read a prompt, quick from its cache."""
        return self.model.partition(":")[0] == "local"

    @property
    def briefed_chat(self) -> bool:
        return self.local if self.chat_style == "auto" else self.chat_style == "briefed"

    def label(self) -> str:
        """What to show people: the model and where it is served, never the key."""
        if not self.uses_model:
            return "rules (no model)"
        return f"{self.model} at {self.base_url}" if self.base_url else self.model

    @classmethod
    def from_env(cls, model: str | None = None, base_url: str | None = None, api_key: str | None = None, **extra: Any) -> ModelConfig:
        """Options first, then ``TAMC_MODEL``, ``TAMC_MODEL_BASE_URL``, ``TAMC_MODEL_API_KEY``."""
        model = model or os.environ.get("TAMC_MODEL") or "rules"
        base_url = base_url or os.environ.get("TAMC_MODEL_BASE_URL") or None
        key = api_key or os.environ.get("TAMC_MODEL_API_KEY") or None
        return cls(model=model, base_url=base_url, api_key=SecretStr(key) if key else None, **extra)


def build_model(config: ModelConfig) -> Model | None:
    """The pydantic-ai model for ``config`` (``None`` for ``rules``), or ``InvalidModelConfig``."""
    if not config.uses_model:
        return None
    from pydantic_ai.exceptions import UserError

    key = config.api_key.get_secret_value() if config.api_key else None
    if config.model.partition(":")[0] == "local" and not config.base_url:  # TAMC's own local model (agents.local_model)
        from agents.local_model import ALIAS, endpoint

        config = config.model_copy(update={"model": ALIAS, "base_url": endpoint(config.model.partition(":")[2] or None)})
    if config.base_url:
        if not config.base_url.startswith(("http://", "https://")):
            raise InvalidModelConfig(f"base URL must start with http:// or https://, got {config.base_url!r}")
        if ":" in config.model.split("/")[0] and config.model.split(":")[0] in ("openai", "openai-chat"):
            raise InvalidModelConfig(f"with --base-url give the model's name as the server knows it (e.g. 'llama3.2'), not {config.model!r}")
        from openai import AsyncOpenAI
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        # no client retries: TAMC retries itself, and only within a decision's time budget
        client = AsyncOpenAI(base_url=config.base_url, api_key=key or "not-needed", max_retries=0)
        return OpenAIChatModel(config.model, provider=OpenAIProvider(openai_client=client))
    from pydantic_ai.models import infer_model

    try:
        return infer_model(config.model)
    except (UserError, ValueError, ImportError) as exc:
        raise InvalidModelConfig(
            f"cannot use model {config.model!r}: {exc}. Give 'rules', a pydantic-ai model string such as "
            "'openai-chat:gpt-4o-mini' (with its API key in the environment), or --base-url for an OpenAI-compatible server"
        ) from None


def transient_errors() -> tuple[type[BaseException], ...]:
    """Model errors worth retrying inside the time budget: overload, rate limits, 5xx, dropped connections."""
    from pydantic_ai.exceptions import (
        ModelConnectionError,
        ModelRateLimitError,
        ModelServerError,
        ModelUnavailableError,
    )

    return (ModelServerError, ModelUnavailableError, ModelRateLimitError, ModelConnectionError)


class BackgroundLoop:
    """One asyncio loop on a daemon thread, for model calls made from synchronous code."""

    def __init__(self, name: str = "tamc-llm") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()  # its self-pipe sockets too: nothing left for the collector to warn about


_shared: BackgroundLoop | None = None
_shared_lock = threading.Lock()


def shared_loop() -> BackgroundLoop:
    """The process's loop for model calls, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BackgroundLoop()
        return _shared
