"""Contrastive domain tuning of the BERT-family text encoder on the shop's own pairs.

Pairs are (anchor, positive) texts: (query, engaged item's text) from search
sessions and (item text, co-engaged item's text) from behaviour, each optionally
with one hard negative (an item the base model ranks high for the anchor but of
another category). Loss: InfoNCE over the batch (every other positive in the batch
is a negative, plus all hard negatives), temperature `temperature`, on the same
mean-pooled, L2-normalised embedding the encoder serves (vectors.encoders.TextEncoder).

Optionally only LoRA adapters (peft) on the attention projections are trained and
merged back before saving. The result is a plain Hugging Face model folder with
safetensors weights (and the tokenizer), so `TextEncoder` loads it like the base
and its folder digest changes `model_version`. Deterministic for a fixed seed on
one machine (fixed shuffles, torch seeded, dropout off).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fusionrank.core.errors import ModelError
from fusionrank.vectors.encoders import require_safetensors

TUNING_FILE = "tuning.json"


@dataclass(frozen=True)
class TuneParams:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    max_length: int = 64
    temperature: float = 0.05
    seed: int = 0
    max_steps: int | None = None
    time_budget_s: float | None = None
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters of this rank, merged on save
    freeze_layers: int = 0  # the embeddings and this many lower transformer layers stay fixed


def _pool(model, tokens):
    import torch

    hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def tune_text_encoder(base: str | Path, out: str | Path, pairs: Sequence[tuple[str, str]],
                      hard_negatives: Sequence[str | None] | None = None,
                      params: TuneParams = TuneParams()) -> dict:
    """Fine-tune the model folder `base` on `pairs` and write the result into `out`.
    Returns what was done (steps, seconds, mean loss of the first and last tenth)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    base, out = Path(base), Path(out)
    require_safetensors(base, "text model")
    if not pairs:
        raise ModelError("tune_text_encoder: no training pairs (no search sessions with engagement?)")
    if hard_negatives is not None and len(hard_negatives) != len(pairs):
        raise ValueError(f"{len(pairs)} pairs but {len(hard_negatives)} hard negatives")
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModel.from_pretrained(str(base), local_files_only=True, use_safetensors=True)
    model.train()
    for module in model.modules():  # dropout off: deterministic, and small data does not need it
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if params.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=params.lora_rank, lora_alpha=2 * params.lora_rank,
                                                 target_modules=["query", "key", "value", "dense"], lora_dropout=0.0))
    else:
        frozen = [model.embeddings] + list(model.encoder.layer[:params.freeze_layers])
        for part in frozen if params.freeze_layers > 0 else []:
            for p in part.parameters():
                p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.01)
    steps_per_epoch = max(1, len(pairs) // params.batch_size)
    total = steps_per_epoch * params.epochs
    if params.max_steps:
        total = min(total, params.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.0, 1.0 - s / max(total, 1)))

    def tokens(texts):
        return dict(tokenizer(list(texts), truncation=True, max_length=params.max_length, padding=True,
                              return_tensors="pt"))

    losses, step, started = [], 0, time.perf_counter()
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(params.epochs)])
    for start in range(0, len(order), params.batch_size):
        if step >= total:
            break
        if params.time_budget_s and time.perf_counter() - started > params.time_budget_s:
            break
        idx = order[start:start + params.batch_size]
        if len(idx) < 2:
            break
        anchors = [pairs[i][0] for i in idx]
        docs = [pairs[i][1] for i in idx]
        if hard_negatives is not None:
            docs += [hard_negatives[i] for i in idx if hard_negatives[i]]
        a = _pool(model, tokens(anchors))
        d = _pool(model, tokens(docs))
        logits = a @ d.T / params.temperature
        # A document identical to another anchor's positive is not a negative for it.
        same = torch.tensor([[docs[j] == docs[i] and j != i for j in range(len(docs))] for i in range(len(idx))])
        logits = logits.masked_fill(same, -1e4)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        step += 1
    seconds = time.perf_counter() - started
    if params.lora_rank > 0:
        model = model.merge_and_unload()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    tenth = max(1, len(losses) // 10)
    report = {"base": str(base), "pairs": len(pairs), "steps": step, "seconds": round(seconds, 1),
              "loss_first": float(np.mean(losses[:tenth])) if losses else None,
              "loss_last": float(np.mean(losses[-tenth:])) if losses else None, "params": asdict(params)}
    # What is saved is deterministic (no timings), so the folder digest is too.
    saved = {k: v for k, v in report.items() if k != "seconds"}
    (out / TUNING_FILE).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return report
