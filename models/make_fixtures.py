"""Makes models/fixtures/: tiny TorchScript models for the capture tests, and what Python's forward
hooks see on the same nn.Modules.

For every model NAME (all from fixed seeds, tiny shapes, a few KB each):
    NAME_scripted.pt   torch.jit.script of the module
    NAME_traced.pt     torch.jit.trace of the module (models without data-dependent control flow)
    NAME_expected.pt   a scripted holder module with attributes
                         inputs: List[Tensor]   the positional inputs of one forward call
                         names:  List[str]      record names, in hook order (a module called twice
                                                appears twice; tuple outputs element-wise as
                                                "<path>:<i>", nested "<path>:<i>:<j>")
                         types:  List[str]      the module class of each record
                         values: List[Tensor]   the hook's output, cloned when the hook ran
                         output: Tensor         what forward returned
    frozen_scripted.pt torch.jit.freeze of the scripted seq model (no module boundaries left)
Forward hooks are registered on every submodule (named_modules, the root excluded) of the eager
module, which runs in eval mode under no_grad.

Run with Debian's torch (no other dependency):
    /usr/bin/python3 models/make_fixtures.py               # writes models/fixtures/
    /usr/bin/python3 models/make_fixtures.py --out DIR
"""

import argparse
import os
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn


# ---- Models --------------------------------------------------------------------------------
class Nested(nn.Module):
    """Nested containers, an Identity on the input, and a submodule called from another method."""

    def __init__(self):
        super().__init__()
        self.ident = nn.Identity()
        self.features = nn.Sequential(nn.Sequential(nn.Linear(4, 6), nn.Tanh()), nn.Linear(6, 6))
        self.extra = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def helper(self, x):
        return self.extra(x)

    def forward(self, x):
        x = self.ident(x)
        return self.head(self.helper(torch.relu(self.features(x))))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one class shared by many instances, in-place ReLU and +=."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(4, 4, 1), BasicBlock(4, 4, 1))
        self.layer2 = nn.Sequential(BasicBlock(4, 6, 2), BasicBlock(6, 6, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Twice(nn.Module):
    """The same modules called twice: two records under one name, in call order."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(self.fc(x))
        x = self.act(self.fc(x))
        return self.out(x)


class Split(nn.Module):
    def forward(self, x) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        a, b = x.chunk(2, dim=1)
        return a, (b, a * b)


class TupleNet(nn.Module):
    """A submodule returning a nested tuple: recorded element-wise."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.split = Split()
        self.fa = nn.Linear(3, 2)

    def forward(self, x):
        a, bc = self.split(self.lin(x))
        b, c = bc
        return self.fa(a) + self.fa(b) + c.sum(dim=1, keepdim=True)


class Flow(nn.Module):
    """Module calls inside if and loop blocks (scripted only: tracing drops control flow)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.loop = nn.Linear(4, 4)
        self.steps: int = 3

    def forward(self, x):
        if bool(x.sum() > 0):
            x = self.a(x)
        else:
            x = self.b(x)
        for blk in self.blocks:
            x = torch.tanh(blk(x))
        for _ in range(self.steps):
            x = torch.tanh(self.loop(x))
        return x


class InPlace(nn.Module):
    """In-place ops after modules: the captures must be what the module returned."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        y.mul_(2.0)
        z = self.act(self.bn(y))
        z += 1.0
        return self.fc2(z) + z


class LoopWrite(nn.Module):
    """In-place ops write what modules returned: in a loop, early in the body, the output of the
    previous iteration (program order alone would call that capture safe), and on the first
    iteration the output of a module called before the loop."""

    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.steps: int = 3

    def forward(self, x):
        h = self.pre(x)
        for _ in range(self.steps):
            h.add_(1.0)
            h = self.act(h)
        return h * 2.0


class Concat(nn.Module):
    """An overloaded forward (torchvision's DenseNet layers): TorchScript names it forward__0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    @torch.jit._overload_method  # noqa: F811
    def forward(self, x):
        # type: (List[Tensor]) -> Tensor
        pass

    @torch.jit._overload_method  # noqa: F811
    def forward(self, x):
        # type: (Tensor) -> Tensor
        pass

    def forward(self, x):  # noqa: F811
        if isinstance(x, Tensor):
            prev = [x, x]
        else:
            prev = x
        return self.lin(torch.cat(prev, 1))


class Overload(nn.Module):
    def __init__(self):
        super().__init__()
        self.cat = Concat()

    def forward(self, x):
        return self.cat([x, torch.tanh(x)])


# (name, constructor, input shape, traced too)
MODELS = [
    ("seq", lambda: nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(3 * 4 * 4, 5)), (2, 1, 6, 6), True),
    ("nested", Nested, (3, 4), True),
    ("resnet", TinyResNet, (2, 1, 5, 5), True),
    ("twice", Twice, (3, 4), True),
    ("tuple", TupleNet, (3, 4), True),
    ("flow", Flow, (3, 4), False),
    ("inplace", InPlace, (3, 4), True),
    ("loopwrite", LoopWrite, (3, 4), True),
    ("overload", Overload, (3, 4), False),
]


def build(name, ctor, seed=0):
    """The eager module `name`, from a fixed seed, in eval mode with non-trivial BN statistics."""
    torch.manual_seed(1000 + sum(map(ord, name)) + seed)
    m = ctor()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(mod.weight, 0.5, 1.5)
            nn.init.uniform_(mod.bias, -0.2, 0.2)
    return m.eval()


def example_input(name, shape):
    g = torch.Generator().manual_seed(2000 + sum(map(ord, name)))
    x = torch.randn(shape, generator=g)
    if name == "flow":
        x = x.abs()  # takes the `if` branch; tests flip the sign for the `else` branch
    return x


def flatten(name: str, value, out: List[Tuple[str, Tensor]]):
    if isinstance(value, Tensor):
        out.append((name, value.detach().clone()))
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            flatten("%s:%d" % (name, i), v, out)


def hook_captures(module: nn.Module, inputs):
    """(output, [(name, type, value)]) from forward hooks on every submodule, in hook order."""
    records = []
    handles = []
    for path, sub in module.named_modules():
        if not path:
            continue

        def hook(mod, args, output, path=path):
            flat = []
            flatten(path, output, flat)
            records.extend((n, type(mod).__name__, v) for n, v in flat)

        handles.append(sub.register_forward_hook(hook))
    try:
        with torch.no_grad():
            output = module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return output, records


class Expected(nn.Module):
    inputs: List[Tensor]
    names: List[str]
    types: List[str]
    values: List[Tensor]

    def __init__(self, inputs, records, output):
        super().__init__()
        self.inputs = list(inputs)
        self.names = [n for n, _, _ in records]
        self.types = [t for _, t, _ in records]
        self.values = [v for _, _, v in records]
        self.output = output

    def forward(self) -> List[Tensor]:
        return self.values


def expected_module(inputs, records, output):
    return torch.jit.script(Expected(inputs, records, output))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "fixtures"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    for name, ctor, shape, traced in MODELS:
        module = build(name, ctor)
        x = example_input(name, shape)
        output, records = hook_captures(module, (x,))
        expected_module((x,), records, output).save(os.path.join(args.out, name + "_expected.pt"))
        torch.jit.script(module).save(os.path.join(args.out, name + "_scripted.pt"))
        if traced:
            with torch.no_grad():
                torch.jit.trace(module, (x.clone(),), check_trace=False).save(
                    os.path.join(args.out, name + "_traced.pt"))
        print("%-8s %2d records" % (name, len(records)))

    frozen = torch.jit.freeze(torch.jit.script(build("seq", MODELS[0][1])))
    frozen.save(os.path.join(args.out, "frozen_scripted.pt"))
    print("torch", torch.__version__)


if __name__ == "__main__":
    main()
