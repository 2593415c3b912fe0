"""Makes data/net_a.pt and data/net_b.pt: hidden activations of two small MLPs on one probe set.

Two MLPs of the same architecture (2 -> 32 -> 32 -> 16 -> 3, ReLU) are trained from different
initialisation seeds, on the same data and for the same 300 full-batch Adam steps, on a small
synthetic classification task: three interleaved noisy spirals in the plane (one class per arm;
not linearly separable, so the hidden layers must bend the plane). Each network's activations on
a fixed probe set of 400 fresh examples are saved as a dict {layer name: float32 tensor}:
    fc1 [400, 32], fc2 [400, 32], fc3 [400, 16] (after the ReLU), logits [400, 3].

Deterministic: fixed seeds, one thread, CPU, deterministic algorithms. Run with Debian's torch
(no other dependency):
    /usr/bin/python3 data/make_activations.py            # writes next to this script
    /usr/bin/python3 data/make_activations.py --out DIR
"""

import argparse
import math
import os

import torch

DIM = 2
CLASSES = 3  # spiral arms
TURNS = 1.5  # turns of each arm
NOISE = 0.15
N_TRAIN = 2000
N_PROBE = 400
STEPS = 300
LR = 1e-2
TRAIN_SEED = 100
PROBE_SEED = 101
NET_SEEDS = {"net_a": 11, "net_b": 22}


def spirals(n, seed):
    """n points of CLASSES interleaved spirals (radius 0..3) with Gaussian noise, and labels."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, CLASSES, (n,), generator=g)
    t = torch.rand(n, generator=g)
    angle = t * TURNS * 2 * math.pi + label * 2 * math.pi / CLASSES
    r = 3.0 * t
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1)
    return x + NOISE * torch.randn(n, DIM, generator=g), label


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(DIM, 32)
        self.fc2 = torch.nn.Linear(32, 32)
        self.fc3 = torch.nn.Linear(32, 16)
        self.out = torch.nn.Linear(16, CLASSES)

    def forward(self, x):
        return self.activations(x)["logits"]

    def activations(self, x):
        h1 = torch.relu(self.fc1(x))
        h2 = torch.relu(self.fc2(h1))
        h3 = torch.relu(self.fc3(h2))
        return {"fc1": h1, "fc2": h2, "fc3": h3, "logits": self.out(h3)}


def train(seed, x, y):
    torch.manual_seed(seed)
    net = Mlp()
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return net, loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                        help="output directory (default: the directory of this script)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, y_train = spirals(N_TRAIN, TRAIN_SEED)
    x_probe, y_probe = spirals(N_PROBE, PROBE_SEED)

    for name, seed in NET_SEEDS.items():
        net, loss = train(seed, x_train, y_train)
        with torch.no_grad():
            acts = {k: v.float().contiguous() for k, v in net.activations(x_probe).items()}
            acc = (acts["logits"].argmax(1) == y_probe).float().mean().item()
        path = os.path.join(args.out, name + ".pt")
        torch.save(acts, path)
        dead = {k: int((v.amax(0) == v.amin(0)).sum()) for k, v in acts.items()}
        print(f"{path}: seed {seed}, train loss {loss:.4f}, probe accuracy {acc:.3f}, "
              f"shapes {[list(v.shape) for v in acts.values()]}, constant units {dead}")


if __name__ == "__main__":
    main()
