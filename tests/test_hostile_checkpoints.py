"""Hostile checkpoints (issue 14): every one refused with one line, in bounded memory and time.

The files are generated: DEFLATE bombs (one record, several records, ZIP64), sizes the
directory lies about, too many records, an oversized pickle, float8 / meta / sparse / nested /
complex / quantized tensors, a 100,000-deep key, a stride-0 view posing as 10 million classes,
a 3 GiB sparse file, a directory and a FIFO given as the checkpoint, and a file name holding a
terminal escape. All are loaded in one measured child process (``tests/hostile.py``).
"""

from __future__ import annotations

import io
import os
import pickle
import struct

import pytest
import torch

from aslquant.errors import InputError
from aslquant.model import (
    MAX_CHECKPOINT_BYTES,
    MAX_CHECKPOINT_PICKLE_BYTES,
    MAX_CHECKPOINT_RECORDS,
    load_checkpoint,
    read_state_dict,
)
from tests.hostile import (
    Record,
    StorageRef,
    TensorRef,
    check_cli_refusal,
    check_refused,
    deflate_zeros,
    run_cases,
    run_cli,
    state_dict_bytes,
    torch_pickle,
    torch_zip,
)
from tests.seed_model import SeedCustomCNN

MiB = 1 << 20
# Building float8/sparse/nested/quantized tensors makes torch warn that they are beta or
# deprecated; that is the point of the cases, not news.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _bomb(records: int, each: int, zip64: bool = False) -> bytes:
    """A checkpoint whose extra tensors are DEFLATE-compressed zeros (each ``each`` bytes)."""
    stream, crc = deflate_zeros(each)
    state = {
        f"x{i}": TensorRef(StorageRef(str(i), each // 4), (each // 4,), (1,))
        for i in range(records)
    }
    storages = [
        Record(str(i), stream, method=8, size=each, crc=crc, zip64=zip64) for i in range(records)
    ]
    return torch_zip(torch_pickle(state), storages)


def _with_tensor(key: str, tensor: torch.Tensor) -> bytes:
    state = SeedCustomCNN(29).state_dict()
    state[key] = tensor
    return state_dict_bytes(state)


def _deep_key(depth: int) -> bytes:
    """data.pkl of ``{((((),),)...): "k"}``: a key nested ``depth`` tuples deep (TUPLE1 ops)."""
    pickled = b"\x80\x02}(" + b")" + b"\x85" * depth + b"X\x01\x00\x00\x00ku."
    return torch_zip(pickled, [])


def _hostile_checkpoints(tmp) -> dict[str, tuple[bytes | None, str]]:
    """name -> (file bytes, or None when the test makes the path itself; expected text)."""
    lying = StorageRef("0", 5 << 30)
    big_pickle = torch_pickle({"w": "x" * (MAX_CHECKPOINT_PICKLE_BYTES + 10)})
    many = [Record(str(i), b"\0\0\0\0") for i in range(MAX_CHECKPOINT_RECORDS)]
    many_state = {f"t{i}": TensorRef(StorageRef(str(i), 1), (1,), (1,)) for i in range(len(many))}
    legacy = io.BytesIO()
    torch.save({"w": "x" * (MAX_CHECKPOINT_PICKLE_BYTES + 10)}, legacy,
               _use_new_zipfile_serialization=False)  # fmt: skip
    seed = SeedCustomCNN(29).state_dict()
    stride0 = dict(seed)
    stride0["fc2.weight"] = torch.zeros(256).expand(10_000_000, 256)
    stride0["fc2.bias"] = torch.zeros(1).expand(10_000_000)
    good = state_dict_bytes(seed)
    return {
        "deflate-bomb": (_bomb(1, 512 * MiB), "is compressed (zip method 8"),
        "deflate-bomb-records": (_bomb(6, 128 * MiB), "is compressed (zip method 8"),
        "deflate-bomb-zip64": (_bomb(1, 1024 * MiB, zip64=True), "is compressed (zip method 8"),
        "stored-lying-zip64": (
            torch_zip(
                torch_pickle({"w": TensorRef(lying, (5 << 28,), (1,))}),
                [Record("0", b"\0" * 64, size=5 << 30, zip64=True)],
            ),
            "declares 5368709120 bytes but stores 64",
        ),
        "too-many-records": (
            torch_zip(torch_pickle(many_state), many),
            f"the limit is {MAX_CHECKPOINT_RECORDS}",
        ),
        "big-pickle": (torch_zip(big_pickle, []), "its pickle 'archive/data.pkl' is"),
        "legacy-big-pickle": (legacy.getvalue(), "its pickle is larger than"),
        "trailing-bytes": (good + b"junk" * 10, "not a torch.save archive"),
        "float8": (
            _with_tensor("fc2.bias", torch.zeros(29, dtype=torch.float8_e4m3fn)),
            "fc2.bias is a float8_e4m3fn tensor",
        ),
        "meta": (_with_tensor("fc2.bias", torch.empty(29, device="meta")), "is a meta tensor"),
        "sparse-coo": (_with_tensor("fc2.bias", torch.zeros(29).to_sparse()), "sparse_coo"),
        "sparse-csr": (
            _with_tensor("fc2.weight", torch.zeros(29, 256).to_sparse_csr()),
            "fc2.weight is a sparse_csr tensor",
        ),
        "nested": (
            _with_tensor("fc2.bias", torch.nested.nested_tensor([torch.zeros(29)])),
            "fc2.bias is a nested tensor",
        ),
        "complex": (_with_tensor("fc2.bias", torch.zeros(29, dtype=torch.complex64)), "complex64"),
        "quantized": (
            _with_tensor(
                "fc2.bias", torch.quantize_per_tensor(torch.zeros(29), 0.1, 0, torch.qint8)
            ),
            "fc2.bias is a qint8 tensor",
        ),
        "deep-key": (_deep_key(100_000), "a state_dict key is a tuple"),
        "stride0-10M-classes": (state_dict_bytes(stride0), "tensors span more than"),
        "sparse-3GiB-file": (None, "checkpoint file is 3221225472 bytes; the limit is"),
        "directory": (None, "checkpoint file is a directory, not a file"),
        "fifo": (None, "checkpoint file is not a regular file"),
        "escape-\x1b[2J-name": (b"not a checkpoint\n", "escape-\\x1b[2J-name.pth: not a PyTorch"),
    }


@pytest.mark.slow
def test_hostile_checkpoints_refused_in_bounded_memory_and_time(tmp_path):
    cases = []
    needles = {}
    for name, (content, needle) in _hostile_checkpoints(tmp_path).items():
        path = tmp_path / f"{name}.pth"
        if name == "sparse-3GiB-file":
            with open(path, "wb") as fh:
                fh.write(b"PK\x03\x04")
                fh.truncate(3 << 30)  # sparse: 3 GiB long, a few bytes on disk
        elif name == "directory":
            path.mkdir()
        elif name == "fifo":
            os.mkfifo(path)
        else:
            path.write_bytes(content)
        cases.append((name, "checkpoint", path))
        needles[name] = needle
    results = run_cases(cases)
    check_refused(results, needles)
    assert "\x1b" not in results["escape-\x1b[2J-name"]["message"]


@pytest.mark.slow
def test_cli_refuses_a_compression_bomb_checkpoint(tmp_path):
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(_bomb(3, 256 * MiB))
    code, stderr, measured = run_cli(["--checkpoint", str(bomb)], tmp_path)
    check_cli_refusal(code, stderr, measured, "bomb.pth: record 'archive/data/0' is compressed")


def test_legacy_and_current_checkpoints_still_load(tmp_path):
    seed = SeedCustomCNN(29)
    legacy = tmp_path / "legacy.pth"
    torch.save(seed.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80"
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in seed.state_dict().items()}}, wrapped)
    for path in (legacy, wrapped):
        model = load_checkpoint(path, num_labels=29)
        assert torch.equal(model.fc2.weight, seed.fc2.weight)


def test_directory_and_fifo_say_what_they_are(tmp_path):
    with pytest.raises(InputError, match="checkpoint file is a directory, not a file"):
        read_state_dict(tmp_path)
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # opening it for reading must not wait for a writer
    with pytest.raises(InputError, match="pipe.pth: checkpoint file is not a regular file"):
        read_state_dict(fifo)


def test_size_cap_applies_to_uploaded_bytes_too():
    with pytest.raises(InputError, match=f"the limit is {MAX_CHECKPOINT_BYTES} bytes"):
        read_state_dict(b"PK\x03\x04" + bytes(MAX_CHECKPOINT_BYTES), name="upload.pth")


def test_compressed_record_refused_before_torch_reads_it():
    stream, crc = deflate_zeros(MiB)
    data = torch_zip(
        torch_pickle({"w": TensorRef(StorageRef("0", MiB // 4), (MiB // 4,), (1,))}),
        [Record("0", stream, method=8, size=MiB, crc=crc)],
    )
    with pytest.raises(InputError, match="upload.pth: record 'archive/data/0' is compressed"):
        read_state_dict(data, name="upload.pth")


def test_zip64_locator_that_points_elsewhere_is_refused():
    good = state_dict_bytes(SeedCustomCNN(29).state_dict())
    at = good.rindex(b"PK\x06\x07")
    (offset,) = struct.unpack_from("<Q", good, at + 8)
    bad = good[: at + 8] + struct.pack("<Q", offset - 8) + good[at + 16 :]
    with pytest.raises(InputError, match="ZIP64 locator points elsewhere"):
        read_state_dict(bad, name="m.pth")


def test_pickle_of_a_deep_container_is_one_line(tmp_path):
    deep = torch_zip(b"\x80\x02}(X\x01\x00\x00\x00k" + b"]" * 50_000 + b"a" * 49_999 + b"u.", [])
    with pytest.raises(InputError) as err:
        read_state_dict(deep, name="deep.pth")
    assert "\n" not in str(err.value) and str(err.value).startswith("deep.pth: ")


def test_bare_pickle_that_is_not_a_checkpoint_is_refused():
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        read_state_dict(pickle.dumps({"a": 1}, protocol=2), name="p.pth")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        read_state_dict(b"\x80\x02\xff\xff", name="p.pth")
