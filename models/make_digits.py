"""Makes models/digits/: the 8x8 digits set as tensors, and a small scripted CNN at several epochs.

The data is scikit-learn's copy of the UCI optical-digits test set (1797 grey-level 8x8 images,
values 0..16, ten classes), read from the file Debian's python3-sklearn ships; nothing is
downloaded. A fixed, class-stratified split (seed DATA_SEED) keeps 20 % of each class for testing.

Writes (all small; see models/README.md):
    data.pt          scripted module with four buffers: train_images uint8 [1438, 1, 8, 8],
                     train_labels uint8 [1438], test_images uint8 [359, 1, 8, 8],
                     test_labels uint8 [360] (pixel values 0..16; the CNN takes value / 16)
    probe.pt         torch.save'd float32 tensor [359, 1, 8, 8]: the test images / 16
    cnn_epoch{0,1,2,4,8}.pt
                     the scripted CNN (conv1, conv2, conv3, fc1, fc2; 10,346 parameters) untrained
                     (epoch 0) and after 1, 2, 4 and 8 epochs of Adam on the training split

Deterministic (byte-identical files): fixed seeds and hash seed, one thread, CPU, deterministic algorithms. Run with Debian's torch
and sklearn:
    /usr/bin/python3 models/make_digits.py            # writes models/digits/
    /usr/bin/python3 models/make_digits.py --out DIR
"""

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

DATA_SEED = 5
INIT_SEED = 6
SHUFFLE_SEED = 7
TEST_FRACTION = 0.2
BATCH = 32
LR = 3e-3
CHECKPOINT_EPOCHS = (0, 1, 2, 4, 8)


class DigitsCnn(torch.nn.Module):
    """[N, 1, 8, 8] images (values in [0, 1]) -> [N, 10] logits.

    conv1 3x3 1->8 (8x8), ReLU; conv2 3x3 8->16 (8x8), ReLU, max-pool -> 4x4;
    conv3 3x3 16->32 (4x4), ReLU, max-pool -> 2x2; fc1 128->32, ReLU; fc2 32->10.
    The ReLUs and poolings are functional, so the tapped layers are the five named modules.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(128, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        h = F.relu(self.fc1(torch.flatten(h, 1)))
        return self.fc2(h)


class DigitsData(torch.nn.Module):
    """Holds the split as buffers, so that C++ reads it with torch::jit::load and attr()."""

    def __init__(self, train_images, train_labels, test_images, test_labels):
        super().__init__()
        self.register_buffer("train_images", train_images)
        self.register_buffer("train_labels", train_labels)
        self.register_buffer("test_images", test_images)
        self.register_buffer("test_labels", test_labels)

    def forward(self) -> int:
        return self.train_images.size(0)


def split(seed):
    """Stratified split: TEST_FRACTION of each class (rounded) to test, in a seeded order."""
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.from_numpy(digits.target.astype(np.uint8))
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(TEST_FRACTION * len(idx)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = torch.cat(train_idx)
    test_idx = torch.cat(test_idx)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=g)]
    test_idx = test_idx.sort().values
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def accuracy(net, images, labels):
    with torch.no_grad():
        return (net(images.float() / 16).argmax(1) == labels.long()).float().mean().item()


def main():
    # TorchScript writes a module's constants in set order, which follows Python's string hash:
    # a fixed hash seed makes the archives byte-identical from run to run.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "digits"),
                        help="output directory (default: models/digits next to this script)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train_x, train_y, test_x, test_y = split(DATA_SEED)

    data = torch.jit.script(DigitsData(train_x, train_y, test_x, test_y))
    data.save(os.path.join(args.out, "data.pt"))
    torch.save(test_x.float() / 16, os.path.join(args.out, "probe.pt"))
    print(f"data.pt: train {list(train_x.shape)}, test {list(test_x.shape)}; "
          f"probe.pt: float32 {list(test_x.shape)}")

    torch.manual_seed(INIT_SEED)
    net = DigitsCnn()
    print(f"DigitsCnn: {sum(p.numel() for p in net.parameters())} parameters")
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    g = torch.Generator().manual_seed(SHUFFLE_SEED)
    x = train_x.float() / 16
    y = train_y.long()
    for epoch in range(max(CHECKPOINT_EPOCHS) + 1):
        if epoch in CHECKPOINT_EPOCHS:
            net.eval()
            path = os.path.join(args.out, f"cnn_epoch{epoch}.pt")
            torch.jit.script(net).save(path)
            print(f"{path}: epoch {epoch}, train accuracy {accuracy(net, train_x, train_y):.4f}, "
                  f"test accuracy {accuracy(net, test_x, test_y):.4f}")
        if epoch == max(CHECKPOINT_EPOCHS):
            break
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            b = perm[i:i + BATCH]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()


if __name__ == "__main__":
    main()
