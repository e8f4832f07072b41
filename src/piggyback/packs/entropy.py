"""Entropy coding of one bit plane, exactly invertible and vectorised with numpy.

A plane (a flat boolean array whose length the reader knows) is coded one of four ways;
its header varint says which. The encoder tries RAW; by the share of the rarer bit, RANS (at
least 15%) or GOLOMB (less); ENUM when there are at most 255 rare bits; and keeps the
shortest. ``docs/pack-format.md`` ("Entropy-coded masks (version 2)") specifies the bytes
so that another program can decode them.

- ``RAW`` (0): the bits as ``numpy.packbits`` writes them. Used when coding does not pay
  (share of ones near one half, tiny planes).
- ``RANS`` (1): range asymmetric numeral systems with a static probability per plane,
  ``K`` independent streams interleaved bit by bit (bit ``i`` goes to stream ``i % K``),
  so that one numpy operation advances every stream by one bit. Close to the entropy for
  any share of ones; its cost per stream (a 32-bit final state) is what limits ``K``.
- ``GOLOMB_ONES`` (2) / ``GOLOMB_ZEROS`` (3): the runs of the majority bit (2: ones, 3:
  zeros) between minority bits, Golomb-coded with a parameter derived from the counts.
  Optimal among prefix codes for such runs: within 0.8% of the entropy when the minority
  bit has a share below 15%, where rANS would need too many steps (up to 3% above it).
  The Golomb codewords are split into three sections (fixed-width remainder prefixes,
  the remainders' extra bits, unary quotients) so that decoding needs no sequential parse.
- ``ENUM_ONES`` (4) / ``ENUM_ZEROS`` (5): at most 255 minority bits (4: zeros among ones,
  5: ones among zeros), their positions as one index in the combinatorial number system,
  ``ceil(log2 C(n, k))`` bits: never above the empirical entropy. For the sparsest planes,
  where the few bytes Golomb spends over the entropy (and their spread from sample to
  sample) would be percents of a plane of a few hundred bytes. A Python step per minority
  bit, on integers of a few thousand bits.

A plane starts with a varint ``coding | k << 3``: ``k`` is the number of minority bits for
GOLOMB and ENUM, 0 for RAW and RANS (whose header is then the single byte ``coding``).
Multi-byte integers are little-endian, but for the ENUM index (big-endian); varints are
unsigned LEB128.
"""

from __future__ import annotations

import math

import numpy as np

RAW = 0
RANS = 1
GOLOMB_ONES = 2
GOLOMB_ZEROS = 3
ENUM_ONES = 4
ENUM_ZEROS = 5
ENUM_MAX_MINORITY = 255  # enumerative coding holds at most this many minority bits

RANS_PRECISION = 12  # probabilities in units of 1/4096
RANS_TOTAL = 1 << RANS_PRECISION
RANS_LOW = 1 << 16  # states live in [2**16, 2**32); a renormalisation moves 16 bits
RANS_MAX_STREAMS = 1 << 16
# rANS is tried when the rarer bit has at least this share; below it Golomb is within
# 0.8% of the entropy and rANS would need too many sequential steps (8000 / H(p)).
RANS_MIN_SHARE = 0.15
# Nor for planes this small: rANS takes about 8000 / H(p) sequential steps whatever the
# size (0.1 s), to save a few hundred bytes over raw bits.
RANS_MIN_COUNT = 1 << 15
# Share of the plane's entropy that the streams' final states may cost (sets K).
RANS_STATE_BUDGET = 0.004
# ln 2 and the rounding offset of the Golomb parameter, in units of 1/4096.
GOLOMB_LN2 = 2839
GOLOMB_OFFSET = 3469


class PlaneError(ValueError):
    """Coded bytes that do not decode to a plane of the given length."""


def entropy_bits(ones: int, count: int) -> float:
    """``count * H(ones / count)``: the empirical entropy of a plane, in bits."""
    if count == 0 or ones in (0, count):
        return 0.0
    p = ones / count
    return -count * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


def encode_plane(bits: np.ndarray, coding: int | None = None) -> bytes:
    """A flat boolean array -> the smallest of its RAW, RANS and GOLOMB codings, or the
    one ``coding`` names (``RAW``, ``RANS`` or ``GOLOMB_ONES``/``GOLOMB_ZEROS``, either
    giving the Golomb coding of the majority bit), to measure or test one coder."""
    bits = np.ascontiguousarray(bits, dtype=bool).reshape(-1)
    count = bits.size
    ones = int(np.count_nonzero(bits))
    if coding is not None:
        if coding == RAW or (count == 0 and coding in (RANS, GOLOMB_ONES, GOLOMB_ZEROS)):
            return _encode_raw(bits)
        if coding == RANS:
            return _encode_rans(bits, ones)
        if coding in (GOLOMB_ONES, GOLOMB_ZEROS):
            return _encode_golomb(bits, ones)
        if coding in (ENUM_ONES, ENUM_ZEROS):
            return _encode_enum(bits, ones)
        raise ValueError(f"unknown plane coding {coding}")
    candidates = [_encode_raw(bits)]
    # rANS spends at least its state budget over the entropy: never below raw near p = 1/2
    pays = entropy_bits(ones, count) * (1 + RANS_STATE_BUDGET) < count - 8
    if min(ones, count - ones) >= RANS_MIN_SHARE * count and count >= RANS_MIN_COUNT:
        if pays:
            candidates.append(_encode_rans(bits, ones))
    elif count:
        candidates.append(_encode_golomb(bits, ones))
    if 0 < min(ones, count - ones) <= ENUM_MAX_MINORITY:
        candidates.append(_encode_enum(bits, ones))
    return min(candidates, key=len)


def decode_plane(data: bytes | np.ndarray, count: int) -> np.ndarray:
    """The inverse of :func:`encode_plane`: ``count`` booleans."""
    buffer = np.frombuffer(bytes(data), dtype=np.uint8) if isinstance(data, bytes) else data
    buffer = np.ascontiguousarray(buffer, dtype=np.uint8).reshape(-1)
    head, offset = _read_varint(buffer, 0)
    mode, minority = head & 7, head >> 3
    if mode in (RAW, RANS) and minority:
        raise PlaneError(f"plane coding {mode} with a count in its header")
    if mode == RAW:
        if buffer.size != 1 + (count + 7) // 8:
            raise PlaneError(f"raw plane of {count} bits has {buffer.size - 1} bytes")
        return np.unpackbits(buffer[1:], count=count).astype(bool)
    if mode == RANS:
        return _decode_rans(buffer, count)
    if mode in (GOLOMB_ONES, GOLOMB_ZEROS):
        return _decode_golomb(buffer[offset:], count, minority, majority=mode == GOLOMB_ONES)
    if mode in (ENUM_ONES, ENUM_ZEROS):
        return _decode_enum(buffer[offset:], count, minority, majority=mode == ENUM_ONES)
    raise PlaneError(f"unknown plane coding {mode}")


# -- varints ---------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buffer: np.ndarray, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= buffer.size or shift > 63:
            raise PlaneError("truncated or overlong varint in a coded plane")
        byte = int(buffer[offset])
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


# -- RAW -------------------------------------------------------------------------------


def _encode_raw(bits: np.ndarray) -> bytes:
    return bytes([RAW]) + np.packbits(bits).tobytes()


# -- GOLOMB ----------------------------------------------------------------------------


def golomb_parameter(count: int, minority: int) -> int:
    """Golomb parameter for ``minority`` runs of ``count - minority`` majority bits:
    ``floor(mean_run * ln 2 + 0.847)``, near ``ceil(log(1+p) / -log(p))``, the optimum
    for geometric runs; in integers so every decoder derives the same value."""
    majority = count - minority
    return max(1, (majority * GOLOMB_LN2 + minority * GOLOMB_OFFSET) // (minority * 4096))


def _bits_of(values: np.ndarray, width: int) -> np.ndarray:
    """Each (non-negative) value as ``width`` bits, most significant first, concatenated."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=bool)
    size = 1 if width <= 8 else 2 if width <= 16 else 4 if width <= 32 else 8
    table = np.unpackbits(values.astype(f">u{size}").view(np.uint8).reshape(-1, size), axis=1)
    return table[:, 8 * size - width :].astype(bool).reshape(-1)


def _values_of(bits: np.ndarray, count: int, width: int) -> np.ndarray:
    """The inverse of :func:`_bits_of`: ``count`` values of ``width`` bits, as int64."""
    size = 1 if width <= 8 else 2 if width <= 16 else 4 if width <= 32 else 8
    table = np.zeros((count, 8 * size), dtype=np.uint8)
    table[:, 8 * size - width :] = bits.reshape(count, width)
    return np.packbits(table, axis=1).view(f">u{size}").reshape(-1).astype(np.int64)


def _encode_golomb(bits: np.ndarray, ones: int) -> bytes:
    count = bits.size
    majority = 2 * ones >= count
    minority_at = np.flatnonzero(~bits if majority else bits)
    k = minority_at.size
    header = _varint(k << 3 | (GOLOMB_ONES if majority else GOLOMB_ZEROS))
    if k == 0:
        return header
    runs = np.diff(minority_at, prepend=-1) - 1
    m = golomb_parameter(count, k)
    quotient, remainder = np.divmod(runs, m)
    width = (m - 1).bit_length()  # b: remainders take b - 1 or b bits
    cut = (1 << width) - m
    if width:
        long = remainder >= cut
        prefix = np.where(long, (remainder + cut) >> 1, remainder)
        sections = [_bits_of(prefix, width - 1), ((remainder + cut) & 1)[long].astype(bool)]
    else:
        sections = []
    unary = np.zeros(int(quotient.sum()) + k, dtype=bool)
    unary[np.cumsum(quotient + 1) - 1] = True  # q zeros, then a one
    sections.append(unary)
    return header + np.packbits(np.concatenate(sections)).tobytes()


def _decode_golomb(buffer: np.ndarray, count: int, k: int, majority: bool) -> np.ndarray:
    """``buffer``: the bytes after the header varint."""
    out = np.full(count, majority, dtype=bool)
    if k == 0:
        if buffer.size:
            raise PlaneError("Golomb plane without minority bits has trailing bytes")
        return out
    if k > count:
        raise PlaneError(f"Golomb plane claims {k} minority bits out of {count}")
    m = golomb_parameter(count, k)
    width = (m - 1).bit_length()
    cut = (1 << width) - m
    payload = np.unpackbits(buffer)
    at = 0
    if width:
        need = k * (width - 1)
        if payload.size < need:
            raise PlaneError("Golomb plane truncated in its remainders")
        prefix = _values_of(payload[:need], k, width - 1)
        at = need
        long = prefix >= cut
        extras = int(np.count_nonzero(long))
        if payload.size < at + extras:
            raise PlaneError("Golomb plane truncated in its remainders")
        remainder = prefix.copy()
        remainder[long] = 2 * prefix[long] + payload[at : at + extras] - cut
        at += extras
    else:
        remainder = np.zeros(k, dtype=np.int64)
    ends = np.flatnonzero(payload[at:])[:k]
    if ends.size < k:
        raise PlaneError("Golomb plane truncated in its quotients")
    if payload.size - at - int(ends[-1]) - 1 >= 8:
        raise PlaneError("Golomb plane has trailing bytes")
    quotient = np.diff(ends, prepend=-1) - 1
    minority_at = np.cumsum(quotient * m + remainder + 1) - 1
    if minority_at[-1] >= count:
        raise PlaneError(f"Golomb plane runs past its {count} bits")
    out[minority_at] = not majority
    return out


# -- ENUM ------------------------------------------------------------------------------


def _encode_enum(bits: np.ndarray, ones: int) -> bytes:
    """Positions ``c_0 < ... < c_{k-1}`` of the minority bits as the index
    ``sum(C(c_i, i + 1))`` in ``[0, C(count, k))``, big-endian in the fewest bytes."""
    count = bits.size
    majority = 2 * ones >= count
    minority_at = np.flatnonzero(~bits if majority else bits)
    k = minority_at.size
    if k > ENUM_MAX_MINORITY:
        raise ValueError(f"enumerative coding holds at most {ENUM_MAX_MINORITY} minority bits")
    index = sum(math.comb(int(c), i + 1) for i, c in enumerate(minority_at.tolist()))
    size = _enum_bytes(count, k)
    header = _varint(k << 3 | (ENUM_ONES if majority else ENUM_ZEROS))
    return header + index.to_bytes(size, "big")


def _enum_bytes(count: int, k: int) -> int:
    return ((math.comb(count, k) - 1).bit_length() + 7) // 8


def _decode_enum(buffer: np.ndarray, count: int, k: int, majority: bool) -> np.ndarray:
    """``buffer``: the bytes after the header varint."""
    if k > min(count, ENUM_MAX_MINORITY):
        raise PlaneError(f"enumerative plane claims {k} minority bits out of {count}")
    if buffer.size != _enum_bytes(count, k):
        raise PlaneError(f"enumerative plane of {k} in {count} bits has the wrong length")
    index = int.from_bytes(buffer.tobytes(), "big")
    if index >= math.comb(count, k):
        raise PlaneError("enumerative plane index out of range")
    out = np.full(count, majority, dtype=bool)
    top = count  # positions so far are below this
    for i in range(k, 0, -1):
        # the largest c < top with C(c, i) <= index; C(i - 1, i) = 0 so c >= i - 1
        low, high = i - 1, top - 1
        while low < high:
            middle = (low + high + 1) // 2
            if math.comb(middle, i) <= index:
                low = middle
            else:
                high = middle - 1
        index -= math.comb(low, i)
        out[low] = not majority
        top = low
    return out


# -- RANS ------------------------------------------------------------------------------


def rans_streams(count: int, ones: int) -> int:
    """Number of interleaved streams: as many as the budget for final states allows."""
    budget = RANS_STATE_BUDGET * entropy_bits(ones, count) / 32
    return int(min(RANS_MAX_STREAMS, max(1, budget), count))


def _rans_probability(ones: int, count: int) -> int:
    """Frequency of a one bit in units of 1/4096, rounded, kept in [1, 4095]."""
    return min(RANS_TOTAL - 1, max(1, (2 * ones * RANS_TOTAL + count) // (2 * count)))


def _encode_rans(bits: np.ndarray, ones: int) -> bytes:
    """rANS, encoding from the last bit to the first. The state arithmetic runs in
    float64, exact here: states stay below 2**32, and ``floor(x / f)`` of a correctly
    rounded quotient is the integer quotient, since a non-integer ``x / f`` lies at least
    ``1 / f >= 2**-12`` below the next integer while the rounding error is below 2**-33."""
    count = bits.size
    f1 = _rans_probability(ones, count)
    f0 = RANS_TOTAL - f1
    streams = rans_streams(count, ones)
    full_steps, partial = divmod(count, streams)
    symbols = bits.view(np.uint8)
    state = np.full(streams, float(RANS_LOW))
    emitted: list[np.ndarray] = []
    # a state at or above f * 2**20 would leave 32 bits: 16 bits move out first
    headroom = float((RANS_LOW >> RANS_PRECISION) << 16)

    def step(x: np.ndarray, s: np.ndarray) -> None:
        f = f0 + s * float(f1 - f0)  # s is 0.0 or 1.0
        out = np.flatnonzero(x >= f * headroom)
        if out.size:
            moved = x[out]
            high = np.floor(moved * (1 / 65536))
            emitted.append((moved - high * 65536).astype("<u2"))
            x[out] = high
        else:
            emitted.append(np.zeros(0, "<u2"))
        q = np.floor(x / f)
        x += q * (RANS_TOTAL - f)  # q * M + (x - q * f): x = x // f * M + x % f
        x += s * float(f0)

    if partial:
        step(state[:partial], symbols[full_steps * streams :].astype(np.float64))
    block = max(1, (1 << 20) // streams)
    for end in range(full_steps, 0, -block):
        begin = max(0, end - block)
        chunk = symbols[begin * streams : end * streams].reshape(end - begin, streams)
        chunk = chunk.astype(np.float64)
        for row in range(end - begin - 1, -1, -1):
            step(state, chunk[row])
    return b"".join(
        [
            bytes([RANS]),
            int(f1).to_bytes(2, "little"),
            _varint(streams),
            state.astype("<u4").tobytes(),
            *(words.tobytes() for words in reversed(emitted)),
        ]
    )


def _decode_rans(buffer: np.ndarray, count: int) -> np.ndarray:
    if buffer.size < 4:
        raise PlaneError("rANS plane truncated in its header")
    f1 = int(buffer[1]) | int(buffer[2]) << 8
    if not 0 < f1 < RANS_TOTAL:
        raise PlaneError(f"rANS plane has probability {f1}/{RANS_TOTAL}")
    f0 = RANS_TOTAL - f1
    streams, offset = _read_varint(buffer, 3)
    if not 0 < streams <= max(1, count):
        raise PlaneError(f"rANS plane has {streams} streams for {count} bits")
    if (buffer.size - offset) < 4 * streams or (buffer.size - offset - 4 * streams) % 2:
        raise PlaneError("rANS plane truncated")
    state = np.frombuffer(buffer, dtype="<u4", count=streams, offset=offset).astype(np.uint32)
    words = np.frombuffer(buffer, dtype="<u2", offset=offset + 4 * streams).astype(np.uint32)
    out = np.empty(count, dtype=bool)
    mask = np.uint32(RANS_TOTAL - 1)
    low = np.uint32(RANS_LOW)
    precision = np.uint32(RANS_PRECISION)
    sixteen = np.uint32(16)
    base = np.uint32(f0)
    delta = np.uint32((f1 - f0) % (1 << 32))  # f = f0 + s * (f1 - f0), modulo 2**32
    at = 0
    for lo in range(0, count, streams):
        x = state[: min(streams, count - lo)]  # a view: updated in place
        slot = x & mask
        s = slot >= base
        out[lo : lo + x.size] = s
        f = s * delta
        f += base
        # x = f * (x >> 12) + slot - start, start = f0 for a one and 0 for a zero
        x >>= precision
        x *= f
        x += slot
        x -= s * base
        need = np.flatnonzero(x < low)
        if need.size:
            if at + need.size > words.size:
                raise PlaneError("rANS plane truncated in its words")
            x[need] = (x[need] << sixteen) | words[at : at + need.size]
            at += need.size
    if at != words.size or not np.all(state == low):
        raise PlaneError("rANS plane does not end in its initial states: corrupt")
    return out
