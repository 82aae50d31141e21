"""Weighted k-nearest-neighbour classification of frozen features (the kNN monitor's classifier).

The rule of DINO's ``eval_knn.py`` (Caron et al. 2021, k = 20, T = 0.07), which is the weighted kNN of
InstDisc (Wu et al. 2018, Sec. 3.4): features are L2-normalised, so the similarity ``s`` of a query to a
bank entry is their cosine; the query's ``k`` most similar bank entries each vote for their own label
with weight ``exp(s / T)``; the class with the largest summed weight is the prediction. An exact tie
goes to the lowest class index (``torch.argmax`` returns the first maximum).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

K = 20
TEMPERATURE = 0.07


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = K, temperature: float = TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (M,) of ``queries`` (M, D) by a weighted vote of their ``k`` nearest ``bank`` (N, D)
    entries (cosine similarity, weights ``exp(s / temperature)``); ``k`` is capped at N. Queries go in
    chunks of ``chunk`` so memory stays at ``chunk x N`` similarities."""
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank {tuple(bank.shape)} and queries {tuple(queries.shape)} must be (N, D) and (M, D)")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels {tuple(bank_labels.shape)} must be ({bank.shape[0]},)")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    bank = F.normalize(bank.float(), dim=1)
    labels = bank_labels.long().to(bank.device)
    k = min(k, bank.shape[0])
    preds = []
    for q in F.normalize(queries.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=sim.dtype)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=bank.device)


def knn_top1(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
             num_classes: int | None = None, k: int = K, temperature: float = TEMPERATURE) -> float:
    """Top-1 accuracy (percent) of :func:`knn_predict` on labelled ``queries``."""
    if num_classes is None:
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    correct = int((pred.cpu() == query_labels.long().cpu()).sum())
    return 100.0 * correct / max(len(query_labels), 1)
