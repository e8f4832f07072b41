"""Entropy-coded mask planes (format version 2): exact round trips, size near the
empirical entropy, and packed files that decode to the same masks as the 1-bit format."""

import hashlib
import json
import time

import numpy as np
import pytest
import torch

from piggyback.methods.checkpoints import load_task_checkpoint
from piggyback.methods.piggyback.method import discrete_masks, task_masks
from piggyback.packs.entropy import (
    ENUM_ONES,
    GOLOMB_ONES,
    RANS,
    RAW,
    PlaneError,
    decode_plane,
    encode_plane,
    entropy_bits,
)
from piggyback.packs.packed_file import PackError, read_manifest, read_pack
from piggyback.stages.packing import pack

SIZES = [0, 1, 2, 7, 8, 9, 13, 1001, 65_537, 200_003]
SHARES = [0.0, 1.0, 0.5, 0.49, 0.51, 0.6, 0.8, 0.9, 0.999, 0.001]


def plane(size: int, share: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(size) < share


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("share", SHARES)
def test_plane_round_trip_is_bit_exact(size, share):
    bits = plane(size, share, seed=size)
    data = encode_plane(bits)
    assert isinstance(data, bytes)
    decoded = decode_plane(data, size)
    assert decoded.dtype == bool and decoded.shape == (size,)
    assert np.array_equal(decoded, bits)
    assert np.array_equal(decode_plane(np.frombuffer(data, np.uint8), size), bits)


@pytest.mark.parametrize("coding", [RAW, RANS, GOLOMB_ONES, ENUM_ONES])
@pytest.mark.parametrize("share", [0.0, 1.0, 0.5, 0.3, 0.97, 0.0005, 0.9995])
@pytest.mark.parametrize("size", [1, 9, 4099, 30_001])
def test_every_coder_round_trips_whatever_the_share(coding, share, size):
    """Each coder alone, also where the automatic choice would never use it."""
    bits = plane(size, share, seed=7)
    if coding == ENUM_ONES and min(bits.sum(), size - bits.sum()) > 255:
        with pytest.raises(ValueError, match="at most 255"):
            encode_plane(bits, coding)
        return
    data = encode_plane(bits, coding)
    assert data[0] & 7 in (
        (coding, coding + 1) if coding in (GOLOMB_ONES, ENUM_ONES) else (coding,)
    )
    assert np.array_equal(decode_plane(data, size), bits)


def test_clustered_planes_round_trip():
    """Real masks are not independent bits: whole filters can be dropped."""
    rng = np.random.default_rng(3)
    for share in (0.6, 0.95, 0.9995):
        bits = np.repeat(rng.random(20_000) < share, 49)[:977_777]
        assert np.array_equal(decode_plane(encode_plane(bits), bits.size), bits)


@pytest.mark.parametrize(
    "share, size",
    [
        (0.6, 10**6),
        (0.9, 10**6),
        (0.99, 10**6),
        (0.999, 10**6),
        (0.6, 10**5),
        (0.999, 10**5),
        (0.8, 30_000),  # below rANS's minimum size: Golomb, not raw bits
    ],
)
def test_size_within_2_percent_of_the_empirical_entropy(share, size):
    """Headers included; at 10**5 bits and p = 0.999 the whole plane is 140 bytes."""
    bits = plane(size, share, seed=1)
    entropy = entropy_bits(int(bits.sum()), bits.size)
    start = time.perf_counter()
    data = encode_plane(bits)
    encoded = time.perf_counter()
    assert np.array_equal(decode_plane(data, bits.size), bits)
    decoded = time.perf_counter()
    ratio = 8 * len(data) / entropy
    print(
        f"p={share}: coding {data[0] & 7}, {8 * len(data) / bits.size:.5f} bits per bit, "
        f"{ratio:.4f} x entropy, encode {encoded - start:.3f} s, decode {decoded - encoded:.3f} s"
    )
    assert ratio <= 1.02
    assert 8 * len(data) >= entropy * 0.99  # no miscounting: a static code cannot beat it


@pytest.mark.parametrize("share", [0.7, 0.95, 0.999])
def test_complement_costs_the_same(share):
    """Mostly-zero planes (a ternary sign plane) code as well as mostly-one ones."""
    bits = plane(100_000, share, seed=2)
    assert abs(len(encode_plane(bits)) - len(encode_plane(~bits))) <= 2
    assert np.array_equal(decode_plane(encode_plane(~bits), bits.size), ~bits)


def test_corrupt_planes_are_refused_not_misread():
    bits = plane(50_000, 0.7, seed=4)
    data = encode_plane(bits)
    with pytest.raises(PlaneError):
        decode_plane(data[: len(data) // 2], bits.size)
    with pytest.raises(PlaneError):
        decode_plane(data + b"\0\0", bits.size)
    with pytest.raises(PlaneError, match="unknown plane coding"):
        decode_plane(b"\x07" + data[1:], bits.size)
    with pytest.raises(PlaneError):
        decode_plane(b"", 3)
    sparse = encode_plane(plane(50_000, 0.99, seed=5))
    with pytest.raises(PlaneError):
        decode_plane(sparse[:-3], 50_000)


# -- packed files --------------------------------------------------------------------

LAYERS = {  # shapes of real ResNet-18 weights, share of kept weights
    "conv1.weight": ([64, 3, 7, 7], 0.55),
    "layer1.0.conv1.weight": ([64, 64, 3, 3], 0.7),
    "layer1.0.conv2.weight": ([64, 64, 3, 3], 1.0),
    "layer2.0.downsample.0.weight": ([128, 64, 1, 1], 0.0),
    "layer3.0.conv2.weight": ([256, 256, 3, 3], 0.93),
    "layer4.0.conv1.weight": ([512, 256, 3, 3], 0.995),
    "odd.weight": ([7, 3, 5], 0.8),
}


def write_checkpoint(path, kind: str, dataset: str, seed: int) -> None:
    """A trained-task checkpoint as train.py writes it, real-valued masks drawn so that
    thresholding keeps each layer's share (ternary: a fifth of the kept ones negative)."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, (shape, share) in LAYERS.items():
        draw = torch.rand(shape, generator=generator)
        real = torch.where(draw < share, 0.02, 0.001)
        if kind == "ternary":
            real = torch.where(draw < share * 0.2, -0.02, real)
        masks[name] = real
    torch.save(
        {
            "masks": masks,
            "mask": {"kind": kind, "threshold": 5e-3},
            "head": {"weight": torch.randn(5, 512, generator=generator), "bias": torch.zeros(5)},
            "classes": ["5", "6", "7", "8", "9"],
            "arch": "resnet18",
            "method": "piggyback" if kind == "binary" else "piggyback_ternary",
            "backbone_sha256": "0" * 64,
            "seed": seed,
            "epoch": 3,
            "test_top1_error": 12.5,
            "test_top5_error": 1.0,
            "dataset": dataset,
        },
        path,
    )


@pytest.fixture(params=["binary", "ternary"])
def checkpoints(request, tmp_path):
    paths = []
    for seed, dataset in enumerate(["cubs", "flowers"]):
        paths.append(tmp_path / f"{dataset}.pt")
        write_checkpoint(paths[-1], request.param, dataset, seed)
    return request.param, paths


def test_entropy_packing_reads_back_the_masks_of_the_bits_packing(checkpoints, tmp_path):
    kind, paths = checkpoints
    bits_file, entropy_file = tmp_path / "bits.safetensors", tmp_path / "entropy.safetensors"
    bits_manifest = pack(paths, bits_file).manifest
    start = time.perf_counter()
    entropy_manifest = pack(paths, entropy_file, encoding="entropy").manifest
    print(f"packed {kind} in {time.perf_counter() - start:.2f} s")
    assert bits_manifest["version"] == 1 and "encodings" not in bits_manifest
    assert entropy_manifest["version"] == 2
    planes = ["mask", "sign"] if kind == "ternary" else ["mask"]
    assert entropy_manifest["encodings"] == {
        f"{task}/{plane}/{name}": "entropy"
        for task in ("cubs", "flowers")
        for name in LAYERS
        for plane in planes
    }
    assert entropy_file.stat().st_size < bits_file.stat().st_size
    for path in paths:
        checkpoint = load_task_checkpoint(path)
        task = checkpoint.dataset
        bits_pack, entropy_pack = read_pack(bits_file), read_pack(entropy_file)
        from_bits, from_entropy = task_masks(bits_pack, task), task_masks(entropy_pack, task)
        expected = discrete_masks(checkpoint)
        if kind == "ternary":
            assert any((m < 0).any() for m in expected.values())
        assert from_entropy.keys() == expected.keys()
        for name, mask in expected.items():
            assert torch.equal(from_bits[name], mask), name
            assert torch.equal(from_entropy[name], mask), name
        assert torch.equal(entropy_pack.head(task)["weight"], checkpoint.head["weight"])
        classes = entropy_pack.manifest["tasks"][task]["classes"]
        assert classes == bits_pack.manifest["tasks"][task]["classes"]


def test_statistics_report_stored_and_entropy_bits_per_weight(checkpoints, tmp_path):
    kind, paths = checkpoints
    out, stats = tmp_path / "pack.safetensors", tmp_path / "stats.tsv"
    result = pack(paths, out, stats, encoding="entropy")
    lines = [line.split("\t") for line in stats.read_text().splitlines()]
    header, rows = lines[0], [dict(zip(lines[0], line, strict=True)) for line in lines[1:]]
    assert header[-2:] == ["entropy_bits_per_weight", "stored_bits_per_weight"]
    raw = out.read_bytes()
    tensors = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    for row in rows:
        if row["layer"] == "TOTAL":
            continue
        stored = sum(
            end - begin
            for plane in ("mask", "sign")
            if (key := f"{row['task']}/{plane}/{row['layer']}") in tensors
            for begin, end in [tensors[key]["data_offsets"]]
        )
        weights = int(row["weights"])
        assert float(row["stored_bits_per_weight"]) == pytest.approx(8 * stored / weights, 1e-5)
        entropy = float(row["entropy_bits_per_weight"])
        if weights >= 100_000 and entropy > 0:
            assert entropy <= float(row["stored_bits_per_weight"]) <= 1.02 * entropy
    for task, bits in result.task_bits().items():
        total = next(r for r in rows if r["task"] == task and r["layer"] == "TOTAL")
        assert float(total["stored_bits_per_weight"]) == pytest.approx(
            bits["stored_bits_per_weight"], abs=1e-6
        )
        assert float(total["entropy_bits_per_weight"]) == pytest.approx(
            bits["entropy_bits_per_weight"], abs=1e-6
        )
        assert bits["stored_bits_per_weight"] < (1.0 if kind == "binary" else 2.0)
        assert int(total["weights"]) == sum(int(np.prod(s)) for s, _ in LAYERS.values())


def test_bits_statistics_keep_the_version_1_columns(checkpoints, tmp_path):
    _, paths = checkpoints
    result = pack(paths, tmp_path / "pack.safetensors", tmp_path / "stats.tsv")
    header = (tmp_path / "stats.tsv").read_text().splitlines()[0].split("\t")
    assert header[-1] == "bits_per_weight"
    for bits in result.task_bits().values():
        assert bits["stored_bits_per_weight"] >= 1.0


def test_edited_entropy_coded_file_fails_its_checksum(checkpoints, tmp_path):
    _, paths = checkpoints
    out = tmp_path / "pack.safetensors"
    pack(paths, out, encoding="entropy")
    data = bytearray(out.read_bytes())
    data[-30_000] ^= 0x10  # inside the mask planes (the heads come first, by name)
    out.write_bytes(bytes(data))
    with pytest.raises(PackError, match="checksum"):
        read_pack(out)


def test_unknown_versions_and_encodings_are_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    _, paths = checkpoints
    out = tmp_path / "pack.safetensors"
    manifest = pack(paths, out, encoding="entropy").manifest
    tensors = load_file(str(out))
    for change, message in [({"version": 4}, "version 4"), ({"encodings": {"x": "zstd"}}, "zstd")]:
        edited = tmp_path / "edited.safetensors"
        text = json.dumps(manifest | change)  # as a later writer would write it, checksum too
        checksum = hashlib.sha256(text.encode()).hexdigest()
        save_file(tensors, str(edited), metadata={"piggyback": text, "piggyback_sha256": checksum})
        with pytest.raises(PackError, match=message):
            read_manifest(edited)
    with pytest.raises(PackError, match="unknown mask encoding"):
        pack(paths, out, encoding="zstd")


def decode_varint_streams(data: bytes) -> int:
    value = shift = 0
    for byte in data[3:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value
    raise AssertionError("no varint")


def documented_decoder():
    """The reference decoder of docs/pack-format.md, run as it is printed there."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "pack-format.md").read_text()
    section = text.split("### Reference decoder", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["decode_coded_plane"]


@pytest.mark.parametrize("coding", [None, RAW, RANS, GOLOMB_ONES, ENUM_ONES])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.62, 0.93, 0.999, 0.9999, 1.0])
def test_documented_decoder_reads_what_the_packing_writes(coding, share):
    decode = documented_decoder()
    for size in (1, 17, 6_007, 40_009):  # the last with several rANS streams
        bits = plane(size, share, seed=size)
        if coding == ENUM_ONES and min(bits.sum(), size - bits.sum()) > 255:
            continue
        data = encode_plane(bits, coding)
        assert decode(data, size) == bits.astype(int).tolist(), (size, data[0])
        assert decode(data, size) == decode_plane(data, size).astype(int).tolist()
    if coding == RANS and share in (0.3, 0.62):
        assert decode_varint_streams(data) > 1
    bits = np.repeat(plane(800, share, seed=9), 9)  # runs of every length
    if coding != ENUM_ONES or min(bits.sum(), bits.size - bits.sum()) <= 255:
        assert decode(encode_plane(bits, coding), bits.size) == bits.astype(int).tolist()
