"""The multi-task model: one pretrained encoder (HF `AutoModel`) shared by one head per task."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from asyncmtl.pretrained import ModelLoadError, resolve_pretrained
from asyncmtl.spec import MINILM_PACKAGE, RunSpec


class MultiTaskModel(nn.Module):
    """Shared encoder + per-task heads (dropout, linear).

    forward(input_ids: (batch, seq), attention_mask: (batch, seq), token_type_ids: (batch, seq) | None)
    returns pooled: (batch, hidden); `head(task, pooled)` returns logits: (rows, num_labels).
    """

    def __init__(self, encoder: nn.Module, num_labels: dict[str, int], pooling: str = "cls", dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in num_labels.items()})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state  # (batch, seq, hidden)
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return hidden[:, 0]

    def head(self, task: str, pooled: torch.Tensor) -> torch.Tensor:
        """Logits of `task` for pooled rows: (rows, hidden) -> (rows, num_labels)."""
        return self.heads[task](self.dropout(pooled))


class TaskForward(nn.Module):
    """The training forward pass as one module, so `DistributedDataParallel` sees the heads' use.

    forward(input_ids, attention_mask, token_type_ids: (batch, seq); rows: task -> (rows,) indices into the
    batch) returns (pooled: (batch, hidden), logits: task -> (rows, num_labels)). DDP can only find the
    heads a rank's slice does not use (`find_unused_parameters`) when they are called inside forward.
    """

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None,
                rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pooled = self.model(input_ids, attention_mask, token_type_ids)
        return pooled, {task: self.model.head(task, pooled[r]) for task, r in rows.items()}


def build_model(spec: RunSpec, base_dir: Path | None = None) -> tuple[MultiTaskModel, object, Path]:
    """Load tokenizer and encoder from `spec.model.pretrained` (offline) and add one head per task.

    Returns:
        (model, tokenizer, encoder directory).

    Raises:
        ModelLoadError: as `resolve_pretrained`, or transformers failed to load the folder.
    """
    from transformers import AutoModel, AutoTokenizer

    path = resolve_pretrained(spec.model.pretrained, base_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"spec.model.pretrained: cannot load {path}: {exc}") from exc
    model = MultiTaskModel(encoder, {t.name: int(t.num_labels or 1) for t in spec.tasks},
                           pooling=spec.model.pooling, dropout=spec.model.dropout)
    return model, tokenizer, path


def save_tiny_random_encoder(out_dir: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                             tokenizer_from: str = MINILM_PACKAGE, seed: int = 0, dropout: float = 0.1,
                             intermediate: int | None = None, max_positions: int = 128) -> Path:
    """Write a randomly initialised BERT (and the MiniLM tokenizer) to `out_dir`: tiny by default, or any
    shape (BERT-base: hidden 768, layers 12, heads 12, intermediate 3072, max_positions 512).

    For tests and benchmarks: it loads through the same `AutoModel.from_pretrained` path as a
    real encoder. Vocabulary size is the tokenizer's (30,522 for MiniLM). `intermediate` defaults to
    2 × hidden.
    """
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(resolve_pretrained(tokenizer_from)), local_files_only=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=intermediate or hidden * 2,
                     max_position_embeddings=max_positions,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def save_multitask_model(model: MultiTaskModel, tokenizer, spec: RunSpec, out_dir: Path,
                         weights: dict[str, torch.Tensor] | None = None) -> None:
    """Save the final model for serving: `encoder/` (HF format), `heads.safetensors`, `asyncmtl.json`
    (tasks, types, label counts, pooling, maxLength). `weights`: the full state by name (`encoder.*`,
    `heads.*`) to save instead of `model`'s own (a sharded model's, gathered)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    if weights is None:
        encoder_state, heads = None, model.heads.state_dict()
    else:
        encoder_state = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
        heads = {k.removeprefix("heads."): v for k, v in weights.items() if k.startswith("heads.")}
    model.encoder.save_pretrained(out_dir / "encoder", state_dict=encoder_state)
    tokenizer.save_pretrained(out_dir / "encoder")
    save_file({k: v.detach().contiguous().cpu() for k, v in heads.items()}, str(out_dir / "heads.safetensors"))
    meta = {
        "pooling": spec.model.pooling,
        "maxLength": spec.model.max_length,
        "tasks": [{"name": t.name, "type": t.type.value, "numLabels": t.num_labels,
                   "labelRange": t.label_range, "textFields": t.text_fields} for t in spec.tasks],
    }
    (out_dir / "asyncmtl.json").write_text(json.dumps(meta, indent=1))


def load_multitask_model(model_dir: str | Path) -> tuple[MultiTaskModel, object, dict]:
    """Load a model saved by `save_multitask_model`: (model in eval mode, tokenizer, metadata)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    d = Path(model_dir)
    meta = json.loads((d / "asyncmtl.json").read_text())
    encoder = AutoModel.from_pretrained(str(d / "encoder"), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(d / "encoder"), local_files_only=True)
    model = MultiTaskModel(encoder, {t["name"]: t["numLabels"] for t in meta["tasks"]}, pooling=meta["pooling"])
    model.heads.load_state_dict(load_file(str(d / "heads.safetensors")))
    return model.eval(), tokenizer, meta
