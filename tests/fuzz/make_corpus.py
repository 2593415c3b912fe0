"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/), deterministically.

    PYTHONPATH=build/torch_ext/python /usr/bin/python3 tests/fuzz/make_corpus.py

npy: small valid and broken .npy files; state: accumulator states saved by svcca (first byte 1:
the whole file; 0: the payload only, which the target frames with a valid header); cli: argument
lists, NUL-separated. Each file stays under 5 KB.
"""
import io
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    folder = os.path.join(CORPUS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_header(descr, shape, fortran=False, version=1):
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", repr(tuple(shape)))
    header += " " * ((64 - (len(header) + 11) % 64) % 64) + "\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(header)) + header.encode()


def npy_corpus():
    rng = np.random.RandomState(0)
    write("npy", "f4_2d", npy_bytes(rng.randn(4, 3).astype(np.float32)))
    write("npy", "f8_4d", npy_bytes(rng.randn(2, 1, 2, 2)))
    write("npy", "f2", npy_bytes(rng.randn(3, 2).astype(np.float16)))
    write("npy", "i2_be", npy_bytes(np.arange(6, dtype=">i2").reshape(3, 2)))
    write("npy", "u4", npy_bytes(np.arange(6, dtype="<u4").reshape(2, 3)))
    write("npy", "u1", npy_bytes(np.arange(4, dtype=np.uint8).reshape(4, 1)))
    write("npy", "fortran", npy_bytes(np.asfortranarray(rng.randn(3, 2))))
    write("npy", "empty_rows", npy_bytes(np.zeros((0, 3), dtype=np.float32)))
    write("npy", "scalar", npy_bytes(np.float64(1.5)))
    write("npy", "nan", npy_bytes(np.array([[1.0, np.nan], [np.inf, 0.0]])))
    v2 = rng.randn(2, 2)
    write("npy", "v2", npy_header("<f8", v2.shape, version=2) + v2.tobytes())
    write("npy", "v3_be", npy_header(">f4", (2, 2), version=3) + v2.astype(">f4").tobytes())
    write("npy", "truncated", npy_bytes(rng.randn(4, 3))[:-8])
    write("npy", "objects", npy_header("|O", (2,)) + b"\0" * 16)
    write("npy", "complex", npy_header("<c16", (1, 1)) + b"\0" * 16)
    write("npy", "huge_dtype", npy_header("<f99999999999999999999", (1, 1)) + b"\0" * 8)
    write("npy", "nul_descr", npy_header("<f\0" + "4", (1, 1)) + b"\0" * 4)
    write("npy", "huge_shape", npy_header("<f4", (2 ** 40, 2 ** 30)))
    write("npy", "nested", npy_header("<f4", (1,)).replace(b"(1,)", b"((((1,),),),)") + b"\0" * 4)


def state_corpus():
    import svcca  # noqa: F401  (loads the op library: torch.classes.svcca.*)
    g = torch.Generator().manual_seed(0)
    tmp = os.path.join(CORPUS, ".tmp_state")
    acc = torch.classes.svcca.CovarianceAccumulator(["x", "y"], [], "float64")
    acc.update([torch.randn(6, 2, generator=g, dtype=torch.float64),
                torch.randn(6, 3, generator=g, dtype=torch.float64)])
    acc.save(tmp)
    cov = open(tmp, "rb").read()
    acc32 = torch.classes.svcca.CovarianceAccumulator(["a", "b", "c"], ["a", "c"], "float32")
    acc32.update([torch.randn(5, 1, generator=g), torch.randn(5, 2, generator=g),
                  torch.randn(5, 1, generator=g)])
    acc32.save(tmp)
    cov32 = open(tmp, "rb").read()
    mb = torch.classes.svcca.MinibatchCkaAccumulator("linear", None, 1.0)
    mb.update(torch.randn(8, 3, generator=g, dtype=torch.float64),
              torch.randn(8, 2, generator=g, dtype=torch.float64))
    mb.save(tmp)
    mbs = open(tmp, "rb").read()
    os.remove(tmp)
    for name, data in (("covariance", cov), ("covariance_f32", cov32), ("minibatch", mbs)):
        write("state", name + "_file", b"\x01" + data)
        write("state", name + "_payload", b"\x00" + data[32:])
    write("state", "truncated", b"\x01" + cov[:40])
    write("state", "empty_payload", b"\x00")


def cli_corpus():
    lines = {
        "help": ["--help"],
        "layers": ["layers", "m.pt", "--input-shape", "2,1,8,8", "--seed", "18446744073709551615"],
        "grid": ["grid", "m.pt", "--input", "p.pt", "--measure", "svcca", "--layers",
                 "conv*,re:fc[0-9]", "--exclude", "*.bn*", "--memory", "6G", "--out", "o"],
        "grid_batch": ["grid", "a.pt", "b.pt", "--input-shape", "64x1x8x8", "--batch-size", "16",
                       "--measure", "minibatch-cka", "--strict", "--train-mode", "--out", "o",
                       "--json"],
        "compare": ["compare", "a.npy", "b.npy", "--layout", "neurons-first", "--conv", "fourier",
                    "--measure", "cca", "--out", "o", "-q", "--no-color"],
        "dynamics": ["dynamics", "e0.pt", "e1.pt", "e2.pt", "--input", "p.pt", "--batch-size", "0",
                     "--out", "o", "--format", "json"],
        "tap": ["tap", "m.pt", "-o", "t.pt"],
        "swallow": ["grid", "m.pt", "--layers", "--out", "o"],
        "empty_items": ["grid", "m.pt", "--input", "p.pt", "--layers", ",,", "--out", ""],
        "bad_seed": ["layers", "m.pt", "--input-shape", "2", "--seed", "-1"],
        "fourier_rbf": ["grid", "m.pt", "--input-shape", "4,1,8,8", "--measure", "rbf-cka",
                        "--batch-size", "2", "--conv", "fourier", "--out", "o"],
    }
    for name, args in lines.items():
        write("cli", name, b"\0".join(a.encode() for a in args))


if __name__ == "__main__":
    npy_corpus()
    cli_corpus()
    state_corpus()
