"""save/load: round trip, refusal of truncated, altered or foreign files, no unpickling, GPU -> CPU."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import nfk_nb as nfk
from nfk_nb import serialization
from nfk_nb.errors import NFKError


def mlp(d=5, h=8, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))


X = torch.randn(25, 5, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def fitted():
    net = mlp()
    est = nfk.LowRankNFK(nfk.Classifier(net), rank=4, power_iters=1, progress=False, whiten=True)
    est.fit(X)
    return net, est


@pytest.fixture
def saved(fitted, tmp_path):
    net, est = fitted
    path = tmp_path / "est.nfk"
    est.save(path)
    return net, est, path


def header(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8 : 8 + n])


def test_round_trip(saved):
    net, est, path = saved
    new = nfk.LowRankNFK.load(path, nfk.Classifier(net))
    for name in ("components_", "singular_values_", "explained_variance_ratio_", "embedding_"):
        assert torch.equal(getattr(new, name), getattr(est, name))
    assert torch.equal(new.fisher_.mean, est.fisher_.mean) and torch.equal(new.fisher_.diag, est.fisher_.diag)
    assert new.get_params()["rank"] == 4 and new.whiten is True
    assert (new.n_samples_fit_, new.n_params_, new.trace_) == (est.n_samples_fit_, est.n_params_, est.trace_)
    assert torch.equal(new.transform(X[:7]), est.transform(X[:7]))


def test_file_is_safetensors_with_json_metadata(saved):
    _, est, path = saved
    _, head = header(path)
    meta = json.loads(head["__metadata__"]["nfk_nb"])
    assert meta["format"] == "nfk_nb.lowrank" and meta["format_version"] == serialization.FORMAT_VERSION
    assert meta["package_version"] == nfk.__version__
    assert meta["params"]["rank"] == 4 and meta["likelihood"]["score"] == "joint"
    assert meta["fingerprint"] == [
        ["0.weight", [8, 5]], ["0.bias", [8]], ["2.weight", [3, 8]], ["2.bias", [3]]
    ]
    assert len(meta["checksum"]) == 64 and len(meta["meta_checksum"]) == 64
    assert set(head) - {"__metadata__"} == {"components", "singular_values", "explained_variance_ratio",
                                            "fisher_mean", "fisher_diag", "embedding"}
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())  # no temporary left


@pytest.mark.parametrize("keep", [0, 7, 100, -1, -9])
def test_truncated_file_is_refused(saved, keep):
    net, _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(NFKError, match="truncated"):
        nfk.LowRankNFK.load(path, nfk.Classifier(net))


def test_flipped_tensor_byte_fails_checksum(saved):
    net, _, path = saved
    n, _ = header(path)
    raw = bytearray(path.read_bytes())
    raw[8 + n + 11] ^= 0x01  # one bit of the tensor data
    path.write_bytes(bytes(raw))
    with pytest.raises(NFKError, match="failed its checksum: the tensors were altered"):
        nfk.LowRankNFK.load(path, nfk.Classifier(net))


def test_altered_settings_fail_metadata_checksum(saved):
    net, _, path = saved
    raw = path.read_bytes()
    altered = raw.replace(b'\\"rank\\": 4', b'\\"rank\\": 3')
    assert altered != raw and len(altered) == len(raw)
    path.write_bytes(altered)
    with pytest.raises(NFKError, match="metadata checksum: the settings were altered"):
        nfk.LowRankNFK.load(path, nfk.Classifier(net))


def test_other_model_is_refused(saved):
    _, _, path = saved
    with pytest.raises(NFKError, match="saved for a model with other parameters"):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp(h=9)))
    with pytest.raises(NFKError, match="saved for a model with other parameters"):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp(), params="2.*"))


def test_other_likelihood_is_refused(saved):
    net, _, path = saved
    words = "saved for another likelihood .*score='joint'.*not.*score='predicted'"
    with pytest.raises(NFKError, match=words):
        nfk.LowRankNFK.load(path, nfk.Classifier(net, score="predicted"))


def test_other_weights_warn(saved):
    _, _, path = saved
    with pytest.warns(UserWarning, match="weights differ"):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp(seed=5)))


def test_not_a_likelihood_is_refused(saved):
    net, _, path = saved
    with pytest.raises(nfk.NFKError, match="lik must be an nfk_nb likelihood"):
        nfk.LowRankNFK.load(path, net)


def test_missing_file(tmp_path):
    with pytest.raises(NFKError, match="No saved NFK estimator at"):
        nfk.LowRankNFK.load(tmp_path / "nope.nfk", nfk.Classifier(mlp()))


def test_loading_never_unpickles(saved, monkeypatch):
    net, _, path = saved

    def forbidden(*a, **k):
        raise AssertionError("unpickling during load")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    nfk.LowRankNFK.load(path, nfk.Classifier(net))


def test_pickle_file_is_refused_without_running_it(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.nfk"
    path.write_bytes(pickle.dumps({"components": Evil()}))
    with pytest.raises(NFKError, match="not a readable saved NFK estimator"):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp()))
    torch_path = tmp_path / "evil.pt"
    torch.save({"x": torch.ones(2)}, torch_path)
    with pytest.raises(NFKError, match="not a readable"):
        nfk.LowRankNFK.load(torch_path, nfk.Classifier(mlp()))
    assert not (tmp_path / "pwned").exists()


def test_plain_safetensors_and_checkpoints_are_not_estimators(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, path)
    with pytest.raises(NFKError, match="not a readable saved NFK estimator"):
        nfk.LowRankNFK.load(path, nfk.Classifier(mlp()))
    other = tmp_path / "ckpt"
    serialization.save_state(other, {"w": torch.ones(3)}, {}, fmt="nfk_nb.checkpoint")
    with pytest.raises(NFKError, match="format is 'nfk_nb.checkpoint', expected 'nfk_nb.lowrank'"):
        nfk.LowRankNFK.load(other, nfk.Classifier(mlp()))


def test_newer_format_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(serialization, "FORMAT_VERSION", 99)
    path = tmp_path / "new.nfk"
    serialization.save_state(path, {"w": torch.ones(2)}, {})
    monkeypatch.setattr(serialization, "FORMAT_VERSION", 2)
    with pytest.raises(NFKError, match="format version 99.*upgrade nfk_nb"):
        serialization.load_state(path)


def test_gpu_saved_file_loads_on_cpu(fitted, tmp_path):
    """A file whose metadata says it was fitted on cuda:0 loads and runs on the CPU."""
    net, est = fitted
    path = tmp_path / "gpu.nfk"
    est.save(path)
    tensors, meta = serialization.load_state(path)
    meta["params"]["device"] = "cuda:0"
    meta["fitted"]["device"] = "cuda:0"
    serialization.save_state(path, tensors, {k: v for k, v in meta.items()
                                             if k not in ("checksum", "meta_checksum", "format",
                                                          "format_version")})
    new = nfk.LowRankNFK.load(path, nfk.Classifier(net), device="cpu")
    assert new.device_ == "cuda:0" and new.components_.device.type == "cpu"
    assert torch.equal(new.transform(X[:4]), est.transform(X[:4]))
    if not torch.cuda.is_available():
        new = nfk.LowRankNFK.load(path, nfk.Classifier(net))  # default device: CPU here
        assert new.operator.device.type == "cpu"


def test_atomic_write_keeps_old_file_on_failure(saved, monkeypatch):
    _, est, path = saved
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        est.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # temporary removed


def test_unfitted_save_is_refused(tmp_path):
    with pytest.raises(NFKError, match="not fitted yet"):
        nfk.LowRankNFK(nfk.Classifier(mlp())).save(tmp_path / "x.nfk")
