"""Train the digit classifier whose features `fd_mnist_classifier` (the DiT CPU default's Fréchet distance)
uses, once, and write it into the package: tasks/data/fd_mnist_classifier.safetensors, whose SHA-256 tasks/fid.py
checks at every load. The metric's network is fixed for everyone: runs on any machine, thread count or cluster
node score samples in the same features, so their distances compare. Re-running this script makes a new
network, i.e. a new metric: bump CLASSIFIER_VERSION and the checksum in tasks/fid.py together.

    python scripts/make_digit_classifier.py        # 1 thread, seed 0; prints the checksum and the val accuracy
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from torch import nn

    from tasks.data.mnist import mnist_digits, split_indices
    from tasks.fid import CLASSIFIER_PATH, DigitFeatures

    torch.set_num_threads(1)
    images, labels = mnist_digits()
    train, val = split_indices(labels, 0.1)  # the DiT default's split: the classifier never sees its val digits
    x = F.pad(images[:, None].float() / 127.5 - 1, (2,) * 4, value=-1.0)  # [-1, 1], 28 → 32 as the DiT default
    torch.manual_seed(0)
    features = DigitFeatures()
    model = nn.Sequential(features, nn.Linear(features.num_features, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(4):
        for idx in torch.randperm(len(train)).split(128):
            batch = train[idx]
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[val]).argmax(-1) == labels[val]).float().mean().item()
    # no metadata: safetensors writes a metadata dict in no fixed order, and the file's checksum is its identity
    save_file({k: v.contiguous() for k, v in features.state_dict().items()}, str(CLASSIFIER_PATH))
    digest = hashlib.sha256(CLASSIFIER_PATH.read_bytes()).hexdigest()
    print(f"{CLASSIFIER_PATH}: val accuracy {accuracy:.4f}, sha256 {digest}")


if __name__ == "__main__":
    main()
