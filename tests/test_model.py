"""Checkpoint loading: the seed's state_dict, its common wrappers, and every way it can be wrong."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from aslquant.errors import InputError
from aslquant.model import CustomCNN, layer_table, load_checkpoint
from tests.seed_model import SeedCustomCNN


@pytest.fixture(scope="module")
def seed_model() -> SeedCustomCNN:
    torch.manual_seed(1)
    return SeedCustomCNN(29).eval()


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def test_seed_state_dict_loads_and_computes_the_same(seed_model, tmp_path):
    path = _save(seed_model.state_dict(), tmp_path / "model.pth")
    model = load_checkpoint(path, num_labels=29)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), seed_model(x), atol=1e-5)
    assert model.num_classes == 29 and not model.training


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model_state_dict": sd, "epoch": 3},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict", "model_state_dict", "module-prefix"],
)
def test_common_wrappers_load(seed_model, tmp_path, wrap):
    path = _save(wrap(seed_model.state_dict()), tmp_path / "wrapped.pth")
    model = load_checkpoint(path)
    assert torch.equal(model.conv1.weight, seed_model.conv1.weight)


def test_num_classes_comes_from_fc2_and_is_checked(seed_model, tmp_path):
    path = _save(SeedCustomCNN(5).state_dict(), tmp_path / "five.pth")
    assert load_checkpoint(path).num_classes == 5
    with pytest.raises(
        InputError, match=r"five\.pth: fc2 has 5 outputs but the labels file has 29"
    ):
        load_checkpoint(path, num_labels=29)


def test_wrong_keys_listed(seed_model, tmp_path):
    sd = seed_model.state_dict()
    sd.pop("conv3.bias")
    sd["head.weight"] = torch.zeros(3)
    path = _save(sd, tmp_path / "other.pth")
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "other.pth" in message and "missing ['conv3.bias']" in message
    assert "unexpected ['head.weight']" in message and "\n" not in message


def test_wrong_shapes_and_one_channel(tmp_path):
    sd = SeedCustomCNN(29).state_dict()
    sd["conv1.weight"] = torch.zeros(16, 1, 5, 5)
    with pytest.raises(InputError, match=r"conv1\.weight is \[16, 1, 5, 5\].*1 channel"):
        load_checkpoint(_save(sd, tmp_path / "gray.pth"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_refused(tmp_path, bad):
    sd = SeedCustomCNN(29).state_dict()
    sd["fc1.weight"][0, 0] = bad
    with pytest.raises(InputError, match="fc1.weight contains NaN or Inf"):
        load_checkpoint(_save(sd, tmp_path / "nan.pth"))


def test_empty_and_text_files(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.pth: checkpoint file is empty"):
        load_checkpoint(empty)
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(InputError, match="notes.pth: not a PyTorch checkpoint"):
        load_checkpoint(text)
    with pytest.raises(InputError, match="checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_whole_pickled_model_refused(seed_model, tmp_path):
    path = tmp_path / "full.pth"
    torch.save(seed_model, path)  # the whole module, not a state_dict
    with pytest.raises(InputError, match="full.pth: refusing to load"):
        load_checkpoint(path)


class _Payload:
    """Pickles to a call that creates a marker file: proof of code execution if it runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_hostile_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    sd = SeedCustomCNN(29).state_dict()
    sd["extra"] = _Payload(marker)
    torch.save(sd, path)
    # The payload is real: an unsafe load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError, match="evil.pth: refusing to load"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_layer_table_counts_params_and_macs():
    rows = {r["name"]: r for r in layer_table(CustomCNN(29))}
    assert rows["conv1"]["params"] == 16 * 3 * 25 + 16
    assert rows["conv1"]["output_shape"] == [16, 220, 220]
    assert rows["conv1"]["macs"] == 3 * 25 * 16 * 220 * 220
    assert rows["fc2"]["macs"] == 256 * 29
    assert sum(r["params"] for r in rows.values()) == sum(
        p.numel() for p in CustomCNN(29).parameters()
    )
