"""Writes a scripted torchvision resnet18 (random weights, eval mode) for capture_bench.

    /usr/bin/python3 benchmarks/make_resnet18.py OUT.pt
Uses Debian's python3-torchvision; the model (45 MB) goes into the build directory, never the repo.
"""
import sys

import torch
import torchvision

torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()
torch.jit.script(model).save(sys.argv[1])
