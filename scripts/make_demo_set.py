"""Build ``src/vimstm/assets/cifar10_test_1000.npz``, the demo's embedded evaluation set.

1,000 images of the CIFAR-10 test split, 100 per class: in each class folder of
``test.tar.xz`` (files sorted by name), the files at positions ``i * n // 100``. The original
JPEG bytes are stored unchanged (one uint8 blob plus offsets), so decoding them gives exactly
the pixels an evaluation of the archive sees.

    python scripts/make_demo_set.py /path/to/cifar10/test.tar.xz
"""

from __future__ import annotations

import argparse
import hashlib
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
PER_CLASS = 100
OUT = Path(__file__).resolve().parent.parent / "src" / "vimstm" / "assets" / "cifar10_test_1000.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive", help="CIFAR-10 test.tar.xz (test/<class>/NNNN.jpg)")
    ap.add_argument("-o", "--out", default=str(OUT))
    args = ap.parse_args()
    members: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
    with tarfile.open(args.archive) as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 2 and parts[-2] in CLASSES:
                members[parts[-2]][m.name] = m
        blobs, labels, files = [], [], []
        for label, cls in enumerate(CLASSES):
            names = sorted(members[cls])
            for i in range(PER_CLASS):
                name = names[i * len(names) // PER_CLASS]
                blobs.append(tar.extractfile(members[cls][name]).read())  # type: ignore[union-attr]
                labels.append(label)
                files.append(name)
    offsets = np.cumsum([0, *map(len, blobs)]).astype(np.int64)
    digest = hashlib.sha256(Path(args.archive).read_bytes()).hexdigest()
    np.savez_compressed(
        args.out, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets,
        labels=np.array(labels, np.uint8), files=np.array(files), classes=np.array(CLASSES),
        source=np.array(f"{Path(args.archive).name} sha256 {digest}"),
    )
    print(f"wrote {args.out}: {len(blobs)} images, {Path(args.out).stat().st_size} bytes")


if __name__ == "__main__":
    main()
