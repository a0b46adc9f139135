"""Read an image's width and height from its first bytes (PNG, JPEG, WebP), without decoding it."""

from __future__ import annotations

from typing import BinaryIO


def image_size(path: str) -> tuple[int, int] | None:
    """Read a stored image's width and height from its header (PNG, JPEG, WebP), or ``None``."""
    with open(path, "rb") as image:
        return size_of(image)


def size_of(image: BinaryIO) -> tuple[int, int] | None:
    head = image.read(32)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        if head[12:16] == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if head[12:16] == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        if head[12:16] == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return None
    if head[:2] != b"\xff\xd8":
        return None
    image.seek(2)
    while (marker := image.read(4)) and len(marker) == 4 and marker[0] == 0xFF:
        length = int.from_bytes(marker[2:4], "big")
        if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):  # a start of frame
            frame = image.read(5)
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
        image.seek(length - 2, 1)
    return None
