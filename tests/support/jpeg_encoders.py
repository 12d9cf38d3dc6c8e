"""Minimal JPEG encoders for test fixtures: 12-bit DCT (process 4, SOF1) and lossless (process 14, SV1, SOF3).

No Python package encodes these two DICOM transfer syntaxes (pydicom, pylibjpeg and Pillow only
decode them), so the tests write their own codestreams from ITU-T T.81 and let the real decoders
(pylibjpeg-libjpeg) read them back. The Huffman tables give every symbol a code of one length:
larger files than an optimised table would give, but valid and simple.
"""

from __future__ import annotations

import struct

import numpy as np

# Zig-zag order of the 64 DCT coefficients (T.81 Figure A.6), as flat indices of an 8x8 block.
_ZIGZAG = np.array(sorted(range(64), key=lambda i: (i // 8 + i % 8, (i // 8) if (i // 8 + i % 8) % 2 else (i % 8))))


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def put(self, value: int, length: int) -> None:
        self._acc = (self._acc << length) | (value & ((1 << length) - 1))
        self._n += length
        while self._n >= 8:
            self._n -= 8
            byte = (self._acc >> self._n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing
        self._acc &= (1 << self._n) - 1

    def flush(self) -> bytes:
        if self._n:
            self.put((1 << (8 - self._n)) - 1, 8 - self._n)  # pad with 1-bits
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def _flat_table(table_class: int, symbols: list[int], length: int) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """A DHT segment giving every symbol a ``length``-bit code, and the codes as symbol -> (code, length)."""
    assert len(symbols) < 2**length  # the all-ones code is not allowed
    bits = [0] * 16
    bits[length - 1] = len(symbols)
    segment = _segment(0xC4, bytes([table_class << 4]) + bytes(bits) + bytes(symbols))
    return segment, {symbol: (i, length) for i, symbol in enumerate(symbols)}


def _magnitude(value: int) -> tuple[int, int]:
    """T.81 F.1.2.1: the size category of ``value`` and its additional bits."""
    size = abs(value).bit_length()
    return size, (value if value >= 0 else value + (1 << size) - 1)


def _frame_header(marker: int, precision: int, pixels: np.ndarray) -> bytes:
    height, width = pixels.shape
    return _segment(marker, struct.pack(">BHHB", precision, height, width, 1) + bytes([1, 0x11, 0]))


def encode_lossless(pixels: np.ndarray, precision: int) -> bytes:
    """Lossless JPEG, first-order prediction (selection value 1), of one (height, width) unsigned array."""
    samples = pixels.astype(np.int64)
    prediction = np.empty_like(samples)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = samples[0, :-1]  # first line: the sample to the left
    prediction[1:, 0] = samples[:-1, 0]  # first column: the sample above
    prediction[1:, 1:] = samples[1:, :-1]  # elsewhere: the sample to the left
    differences = (samples - prediction + 32768) % 65536 - 32768  # modulo 2^16 (T.81 H.1.2.1)
    table, codes = _flat_table(0, list(range(17)), 5)
    writer = _BitWriter()
    for difference in differences.ravel().tolist():
        size, bits = (16, 0) if difference == -32768 else _magnitude(difference)
        writer.put(*codes[size])
        if 0 < size < 16:
            writer.put(bits, size)
    scan = _segment(0xDA, bytes([1, 1, 0x00, 1, 0, 0]))  # Ss=1: predictor 1; Se=0; Ah/Al=0
    return b"\xff\xd8" + _frame_header(0xC3, precision, pixels) + table + scan + writer.flush() + b"\xff\xd9"


def encode_extended12(pixels: np.ndarray, quantizer: int = 2) -> bytes:
    """Lossy 12-bit JPEG (extended sequential, Huffman, SOF1) of one (height, width) array in 0..4095.

    Every coefficient is quantized by ``quantizer``, so the loss is a few units in 4095.
    """
    height, width = pixels.shape
    padded = np.pad(pixels.astype(np.float64), ((0, -height % 8), (0, -width % 8)), mode="edge") - 2048.0
    k = np.arange(8)
    basis = np.sqrt(2 / 8) * np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16)
    basis[0] /= np.sqrt(2)
    blocks = padded.reshape(padded.shape[0] // 8, 8, padded.shape[1] // 8, 8).transpose(0, 2, 1, 3)
    coefficients = np.einsum("ux,abxy,vy->abuv", basis, blocks, basis)
    quantized = np.rint(coefficients / quantizer).astype(np.int64).reshape(-1, 64)[:, _ZIGZAG]

    dc_table, dc_codes = _flat_table(0, list(range(16)), 5)
    ac_symbols = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 15)]
    ac_table, ac_codes = _flat_table(1, ac_symbols, 8)
    writer = _BitWriter()
    previous_dc = 0
    for block in quantized.tolist():
        size, bits = _magnitude(block[0] - previous_dc)
        previous_dc = block[0]
        writer.put(*dc_codes[size])
        writer.put(bits, size)
        run = 0
        for value in block[1:]:
            if value == 0:
                run += 1
                continue
            while run > 15:
                writer.put(*ac_codes[0xF0])
                run -= 16
            size, bits = _magnitude(value)
            writer.put(*ac_codes[(run << 4) | size])
            writer.put(bits, size)
            run = 0
        if run:
            writer.put(*ac_codes[0x00])  # end of block
    quant_table = _segment(0xDB, bytes([0x00]) + bytes([quantizer] * 64))
    scan = _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0]))  # DC and AC table 0; Ss=0, Se=63: sequential DCT
    return (b"\xff\xd8" + quant_table + _frame_header(0xC1, 12, pixels) + dc_table + ac_table + scan
            + writer.flush() + b"\xff\xd9")
