"""Local training and evaluation in plain PyTorch: what runs inside a site or aggregator app."""

from __future__ import annotations

import torch
from torch import nn

from proxyflox.data import ArrayDataset


def train_local(
    model: nn.Module,
    data: ArrayDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    shuffle_seed: int,
    device: str = "cpu",
    proximal_mu: float = 0.0,
) -> float:
    """SGD with momentum over ``data`` for ``epochs`` (a fresh optimizer each call).

    Shuffling uses its own generator seeded by ``shuffle_seed``, never the global RNG, so sites
    training concurrently in threads stay reproducible. With ``proximal_mu > 0`` (FedProx) the
    loss gets ``mu/2 * ||w - w_start||^2``, pulling the model toward the one it started from.

    Returns:
        Mean training loss over the last epoch.
    """
    model.to(device)
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    generator = torch.Generator().manual_seed(shuffle_seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    model.train()
    mean_loss = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator).to(device)
        total, seen = 0.0, 0
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            objective = loss
            if anchor:
                distance = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                objective = loss + proximal_mu / 2 * distance
            objective.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        mean_loss = total / seen
    return mean_loss


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset, batch_size: int = 512, device: str = "cpu"
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy loss of ``model`` on ``data``."""
    model.to(device)
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    correct, loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[start : start + batch_size]).to(device)
        y = torch.from_numpy(data.y[start : start + batch_size]).to(device)
        logits = model(x)
        loss += float(loss_fn(logits, y))
        correct += int((logits.argmax(dim=1) == y).sum())
    return correct / len(data), loss / len(data)
