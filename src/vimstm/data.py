"""Evaluation data: image folders, ImageNet layouts, archives, and the official preprocessing.

``open_dataset`` reads

* class folders (``root/<class>/*.jpg``; classes sorted by name, as torchvision's ImageFolder),
* ImageNet layouts (``root/val/<wnid>/*.JPEG`` or ``root/<wnid>/...``). When every class folder
  is an ImageNet-1k wnid, the labels are the standard ImageNet-1k indices (the line numbers of
  the sorted synset list shipped as ``vimstm/imagenet_synsets.txt``), so a folder that holds only
  some of the 1000 classes is still scored against the right outputs,
* ``.tar``/``.tar.gz``/``.tar.xz`` archives of class folders, extracted once into a cache folder
  (``$VIMSTM_CACHE`` or ``~/.cache/vimstm``), keyed by the archive's path, size and mtime.

Images that cannot be read are reported (one line on stderr with the path) and skipped:
``__getitem__`` returns ``None`` for them and :func:`collate_skip` drops them from the batch and
counts them, so evaluation reports how many were skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from vimstm.errors import ConfigError, DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
SMALL_IMAGE = 64  # training inputs up to this size: RandomCrop + flip instead of RandomResizedCrop
SPLIT_NAMES = ("val", "validation", "test", "train")  # preferred split first
_WNID = re.compile(r"^n\d{8}$")
SYNSETS_FILE = Path(__file__).resolve().parent / "imagenet_synsets.txt"


# ---------------------------------------------------------------- ImageNet synsets


@lru_cache(maxsize=1)
def _synset_table() -> tuple[tuple[str, str], ...]:
    rows = []
    for line in SYNSETS_FILE.read_text().splitlines():
        if line.strip():
            wnid, _, name = line.partition("\t")
            rows.append((wnid.strip(), name.strip()))
    return tuple(rows)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k wnids in index order (line k is class k)."""
    return [w for w, _ in _synset_table()]


def imagenet_class_names() -> list[str]:
    """Human-readable names of the 1000 ImageNet-1k classes, in index order."""
    return [n for _, n in _synset_table()]


def _read_synsets_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"synsets file not found: {path}; give a file with one class name "
                        "(or 'wnid<TAB>name') per line, in index order")
    names = [line.split("\t")[0].strip() for line in path.read_text().splitlines()
             if line.strip()]
    if not names:
        raise DataError(f"synsets file {path} is empty; it needs one class per line")
    return names


# ---------------------------------------------------------------- archives


def cache_dir() -> Path:
    """Where archives are extracted: ``$VIMSTM_CACHE`` or ``~/.cache/vimstm``."""
    env = os.environ.get("VIMSTM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vimstm"


def is_archive(path: str | Path) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in ARCHIVE_SUFFIXES)


def extract_archive(path: str | Path) -> Path:
    """Extract a tar archive once into the cache; returns the extracted folder.

    The folder is keyed by the archive's absolute path, size and mtime, so a changed archive is
    extracted again. Extraction goes to a temporary folder that is renamed into place, so two
    processes (ranks under torchrun, say) never see a half-extracted folder.
    """
    src = Path(path).expanduser().resolve()
    st = src.stat()
    key = hashlib.sha1(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = src.name.split(".")[0] or "data"
    base = cache_dir() / "data"
    final = base / f"{stem}-{key}"
    if final.is_dir():
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-{key}.", dir=base))
    except OSError as e:
        raise DataError(f"cannot create the cache folder {base} to extract {src} ({e}); set "
                        "VIMSTM_CACHE to a writable folder, or extract the archive yourself "
                        "and pass the folder") from None
    try:
        try:
            with tarfile.open(src, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise DataError(f"cannot extract archive {src}: {type(e).__name__}: {e}; it may be "
                            "truncated or corrupt, copy it again") from None
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---------------------------------------------------------------- folders


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def resolve_root(root: str | Path) -> Path:
    """The folder of class folders that ``root`` designates (extracting archives, finding splits).

    ``root`` may be an archive; a folder holding split folders (``val`` is preferred, then
    ``validation``, ``test``, ``train``); or a folder with a single wrapper folder inside
    (``test/<class>/...`` in an archive, say).
    """
    p = Path(root).expanduser()
    if not p.exists():
        raise DataError(f"data path not found: {p}; give a folder of class folders "
                        "(ImageNet: the folder holding val/<wnid>/*.JPEG) or a .tar/.tar.xz of one")
    if p.is_file():
        if not is_archive(p):
            raise DataError(f"{p} is a file but not a .tar/.tar.gz/.tar.xz archive; give a "
                            "folder of class folders or such an archive")
        p = extract_archive(p)
    for _ in range(4):
        dirs = _subdirs(p)
        names = {d.name.lower(): d for d in dirs}
        if dirs and all(n in SPLIT_NAMES for n in names):
            p = next(names[s] for s in SPLIT_NAMES if s in names)
            continue
        has_images = any(_is_image(f) for f in p.iterdir() if f.is_file())
        if len(dirs) == 1 and not has_images and _subdirs(dirs[0]):
            p = dirs[0]
            continue
        break
    return p


# ---------------------------------------------------------------- dataset


def _warn(msg: str) -> None:
    print(f"vimstm: warning: {msg}", file=sys.stderr, flush=True)


class ImageFolderDataset(Dataset):
    """Images in class folders, with labels from sorted folder names or a synset list.

    ``__getitem__`` returns ``(image, label)``, or ``None`` for an image that cannot be read
    (reported on stderr and counted in ``skipped`` of this process; use :func:`collate_skip`).
    """

    def __init__(self, root: Path, samples: list[tuple[str, int]], classes: list[str],
                 transform: Callable[[Any], Tensor] | None, labels: str = "folders") -> None:
        self.root = root
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.num_classes = len(classes)
        self.transform = transform
        self.labels = labels  # "imagenet-1k", "folders" or "list" (given class list)
        self.imagenet = labels == "imagenet-1k"
        self.skipped = 0
        self.skipped_paths: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tensor:
        """The transformed image at ``index``; raises the reader's error for a bad file."""
        from PIL import Image

        path = self.samples[index][0]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if self.transform is None:
            from torchvision.transforms.functional import to_tensor

            return to_tensor(img)
        return self.transform(img)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        from PIL import Image

        path, target = self.samples[index]
        try:
            return self.load(index), target
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            self.skipped += 1
            self.skipped_paths.append(path)
            _warn(f"skipping unreadable image {path} ({type(e).__name__}: {e})")
            return None

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({str(self.root)!r}, images={len(self)}, "
                f"classes={self.num_classes}, labels={self.labels!r})")


def open_dataset(
    root: str | Path,
    transform: Callable[[Any], Tensor] | None = None,
    synsets: str | Path | Sequence[str] | None = None,
) -> ImageFolderDataset:
    """Open a folder of class folders, an ImageNet layout, or an archive of class folders.

    ``synsets`` decides the labels: ``None`` (auto: ImageNet-1k indices when every class folder
    is an ImageNet-1k wnid, else sorted folder names), ``"imagenet"``, ``"folders"``, a path to a
    file with one class per line (``wnid<TAB>name`` is fine), or a list of class names in index
    order. Every class folder must then be in the list; labels are positions in it.
    """
    folder = resolve_root(root)
    dirs = _subdirs(folder)
    if not dirs:
        loose = [f for f in folder.iterdir() if f.is_file() and _is_image(f)]
        what = (f"{len(loose)} images but no class folders" if loose else "no class folders")
        raise DataError(f"{folder} holds {what}; expected {folder}/<class>/<image>.jpg "
                        "(ImageNet val: images sorted into wnid folders, val/<wnid>/*.JPEG)")
    names = [d.name for d in dirs]
    if synsets is None:
        wnids = set(imagenet_synsets())
        synsets = "imagenet" if all(_WNID.match(n) and n in wnids for n in names) else "folders"
    if isinstance(synsets, str) and synsets == "folders":
        classes, labels = names, "folders"
    elif isinstance(synsets, str) and synsets == "imagenet":
        classes, labels = imagenet_synsets(), "imagenet-1k"
    elif isinstance(synsets, str | Path):
        classes, labels = _read_synsets_file(Path(synsets)), "list"
    else:
        classes, labels = list(synsets), "list"
    index = {c: i for i, c in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise DataError(f"{len(unknown)} class folder(s) in {folder} are not in the class list "
                        f"(e.g. {unknown[:3]}); give the matching synsets list, or "
                        "synsets='folders' (CLI: --synsets folders) to label by sorted folder name")
    samples: list[tuple[str, int]] = []
    for d in dirs:
        files = sorted(str(f) for f in d.rglob("*") if f.is_file() and _is_image(f))
        samples.extend((f, index[d.name]) for f in files)
    if not samples:
        raise DataError(f"no images in {folder}: its {len(dirs)} class folder(s) hold no "
                        f"{'/'.join(e.lstrip('.') for e in IMG_EXTENSIONS[:4])}... files; "
                        "check the path")
    return ImageFolderDataset(folder, samples, classes, transform, labels)


DEMO_SET = Path(__file__).resolve().parent / "assets" / "cifar10_test_1000.npz"


class EmbeddedImages(Dataset):
    """Images stored as JPEG bytes in one ``.npz`` (see ``vimstm/assets/README.md``).

    Same interface as :class:`ImageFolderDataset` for evaluation: ``(image, label)`` items,
    ``classes``, ``num_classes``, ``root``, ``imagenet`` (False).
    """

    def __init__(self, path: Path, transform: Callable[[Any], Tensor] | None = None) -> None:
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                self._jpeg = z["jpeg"].tobytes()
                self._offsets = z["offsets"].tolist()
                self.targets = z["labels"].astype(int).tolist()
                self.files = z["files"].tolist()
                self.classes = z["classes"].tolist()
                self.source = str(z["source"])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"cannot read the embedded images {path} ({e}); reinstall vimstm"
                            ) from None
        self.root = path
        self.num_classes = len(self.classes)
        self.transform = transform
        self.imagenet = False
        self.labels = "list"

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> Any:
        """The decoded PIL image at ``index``."""
        import io

        from PIL import Image

        lo, hi = self._offsets[index], self._offsets[index + 1]
        with Image.open(io.BytesIO(self._jpeg[lo:hi])) as im:
            return im.convert("RGB")

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.image(index)
        if self.transform is None:
            from torchvision.transforms.functional import to_tensor

            return to_tensor(img), self.targets[index]
        return self.transform(img), self.targets[index]

    def __repr__(self) -> str:
        return f"EmbeddedImages({str(self.root)!r}, images={len(self)}, classes={self.num_classes})"


def demo_cifar10(transform: Callable[[Any], Tensor] | None = None) -> EmbeddedImages:
    """The 1,000 CIFAR-10 test images shipped inside the package (100 per class)."""
    return EmbeddedImages(DEMO_SET, transform)


# ---------------------------------------------------------------- preprocessing


def eval_transform(
    img_size: int | tuple[int, int] = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> Callable[[Any], Tensor]:
    """The official Vim evaluation transform.

    Resize the short side to ``int(img_size / crop_pct)`` (256 for 224 at 0.875), center-crop
    ``img_size``, ToTensor, normalize. For ``img_size <= 32`` (CIFAR), as in the official code,
    images already of that size are only converted and normalized; other sizes are still
    resized and cropped so a batch can be formed.
    """
    from torchvision import transforms as T

    if not 0.0 < crop_pct <= 1.0:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    try:
        mode = T.InterpolationMode(interpolation)
    except ValueError:
        raise ConfigError(f"unknown interpolation {interpolation!r}; use bicubic, bilinear "
                          "or nearest") from None
    size: int | tuple[int, int] = int(h / crop_pct) if h == w else (int(h / crop_pct),
                                                                      int(w / crop_pct))
    resize_crop = T.Compose([T.Resize(size, interpolation=mode), T.CenterCrop((h, w))])
    tail = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    if max(h, w) > 32:
        return T.Compose([resize_crop, tail])
    return _SmallImageTransform((h, w), resize_crop, tail)


class _SmallImageTransform:
    """CIFAR-size transform: no resize for images of the model's size (official), else resize."""

    def __init__(self, size: tuple[int, int], resize_crop: Callable, tail: Callable) -> None:
        self.size = size
        self.resize_crop = resize_crop
        self.tail = tail

    def __call__(self, img: Any) -> Tensor:
        if (img.height, img.width) != self.size:
            img = self.resize_crop(img)
        return self.tail(img)

    def __repr__(self) -> str:
        return f"SmallImageTransform(size={self.size}, tail={self.tail})"


def model_transform(model: torch.nn.Module, img_size: int | None = None,
                    crop_pct: float | None = None) -> Callable[[Any], Tensor]:
    """The evaluation transform from ``model.default_cfg`` (mean, std, crop_pct, input size)."""
    cfg = dict(getattr(model, "default_cfg", None) or {})
    size: int | tuple[int, int]
    if img_size is None:
        h, w = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
        size = h if h == w else (h, w)
    else:
        size = img_size
    return eval_transform(
        size,
        crop_pct=crop_pct if crop_pct is not None else cfg.get("crop_pct", 0.875),
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        interpolation=cfg.get("interpolation", "bicubic"),
    )


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                    aa: str | None = "rand-m9-mstd0.5-inc1", reprob: float = 0.25,
                    interpolation: str = "bicubic") -> Callable[[Any], Tensor]:
    """The training augmentation (DeiT recipe through timm).

    Inputs larger than ``SMALL_IMAGE`` get timm's ``create_transform`` (RandomResizedCrop,
    flip, RandAugment, random erasing); smaller ones (CIFAR) get
    ``RandomCrop(padding=size/8)`` + flip + RandAugment + random erasing.

    Args:
        img_size: the model's input size.
        mean, std: the normalisation of the model's data.
        aa: a timm RandAugment policy such as ``rand-m9-mstd0.5-inc1``; ``None``/``"none"``: off.
        reprob: random-erasing probability.
        interpolation: resize interpolation for the large-input path.
    """
    from timm.data import create_transform

    aa = None if aa in (None, "", "none") else aa
    if img_size > SMALL_IMAGE:
        return create_transform(
            img_size, is_training=True, auto_augment=aa, interpolation=interpolation,
            re_prob=reprob, re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
        )
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    ops: list[Any] = [
        T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC),  # no-op at the right size
        T.RandomCrop(img_size, padding=img_size // 8, padding_mode="reflect"),
        T.RandomHorizontalFlip(),
    ]
    if aa:
        if not aa.startswith("rand"):
            raise ConfigError(f"--aa {aa!r}: only RandAugment policies ('rand-...') are supported")
        hparams = dict(translate_const=int(img_size * 0.45),
                       img_mean=tuple(round(255 * m) for m in mean))
        try:
            ra = rand_augment_transform(aa, hparams)
        except (AssertionError, ValueError, KeyError) as e:
            raise ConfigError(f"--aa {aa!r} is not a valid timm RandAugment string: {e}") from None
        for op in getattr(ra, "ops", ()):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = _posterize  # timm can ask for 0 bits, which Pillow >= 11 refuses
        ops.append(ra)
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if reprob > 0:
        ops.append(RandomErasing(reprob, mode="pixel", max_count=1, device="cpu"))
    return T.Compose(ops)


def _posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    from PIL import ImageOps

    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, int(bits_to_keep)))


# ---------------------------------------------------------------- loading


def collate_skip(batch: list[tuple[Tensor, int] | None]) -> tuple[Tensor, Tensor, int]:
    """Stack the readable samples; returns ``(images, labels, number_skipped)``."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good], dtype=torch.long)
    return images, labels, skipped


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``W`` gets indices ``r, r+W, r+2W, ...``: every index once, no padding."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def check_classes(classes: Sequence[str], where: str, *, expected: Sequence[str] | None = None,
                  outputs: int | None = None, labels: str = "folders", data: str = "the data",
                  training: bool = False) -> None:
    """A one-line :class:`DataError` when a data set's ``classes`` do not fit ``where``.

    ``expected``: the class names ``where`` was trained on (same names, same order);
    ``outputs``: its number of outputs; ``labels``: how the data set labels its folders
    (``open_dataset``); ``training``: a new model is being built, so ``--num-classes`` can fix
    a count mismatch (a trained checkpoint's head cannot change, so there it is never advised).
    """
    if expected is not None and list(expected) != list(classes):
        extra = sorted(set(classes) - set(expected))
        missing = sorted(set(expected) - set(classes))
        detail = (f"the data has {len(extra)} class(es) the model lacks (e.g. {extra[:3]}) and "
                  f"lacks {len(missing)} (e.g. {missing[:3]})" if extra or missing
                  else "the same names in another order")
        raise DataError(
            f"the classes of {data} ({len(classes)}) differ from those of {where} "
            f"({len(expected)}): {detail}. Use data with the same class folders, or train a new "
            "model on this data"
        )
    if outputs is None or outputs == len(classes):
        return
    k = len(classes)
    shown = ", ".join(list(classes)[:4]) + (", ..." if k > 4 else "")
    if labels == "imagenet-1k":
        hint = (f"if the model was trained on these wnid folders as its own {outputs} classes, "
                "label by folder name with --synsets folders (open_dataset(synsets='folders'))")
    elif training:
        hint = (f"use data with {outputs} class folders, or pass --num-classes {k} to train a "
                "new model on these classes")
    elif k < outputs:
        hint = (f"if these folders are {k} of the model's {outputs} classes, pass --synsets FILE "
                f"naming all {outputs} classes in the model's output order, one per line, so each "
                "folder gets its class index; otherwise use data with all its classes")
    else:
        hint = f"use data with the model's {outputs} classes"
    raise DataError(f"{data} has {k} classes ({shown}) but {where} has {outputs} outputs; {hint}")


def spread_subset(dataset: Dataset, n: int) -> Dataset:
    """``n`` items spread evenly over ``dataset`` (class-sorted data keeps every class); the
    data set itself when it has no more than ``n``."""
    total = len(dataset)  # type: ignore[arg-type]
    if n >= total:
        return dataset
    return Subset(dataset, [i * total // n for i in range(n)])


def holdout_split(targets: Sequence[int], n: int,
                  classes: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """Hold out ``n`` images class-balanced: returns ``(kept, held_out)`` indices, each sorted.

    Each class with images gets ``n // C`` held-out images, the first ``n % C`` of them (in
    class-index order) one more. Within a class the images are ranked by a hash of their place
    in the class (the data's sorted order), so the split depends only on the data and ``n``:
    never on a seed, the number of processes or loader workers, or the Python/torch version.

    Raises:
        ConfigError: ``n`` out of ``[C, len(targets) - 1]``, or a class too small to keep an
            image for training after its share.
    """
    total = len(targets)
    if not 1 <= n < total:
        raise ConfigError(f"--holdout {n} must be between 1 and {total - 1} (the training data "
                          f"has {total} images and some must remain to train on)")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    labels = sorted(by_class)
    k = len(labels)
    if n < k:
        raise ConfigError(f"--holdout {n} is fewer than the {k} classes of the training data: a "
                          f"class-balanced held-out set needs at least one image per class; use "
                          f"--holdout {k} or more")
    held: list[int] = []
    for rank, c in enumerate(labels):
        members = by_class[c]
        share = n // k + (rank < n % k)
        if share >= len(members):
            name = classes[c] if classes is not None and c < len(classes) else str(c)
            raise ConfigError(f"--holdout {n} takes {share} images of class {name!r}, which has "
                              f"only {len(members)}: none would be left to train on; use a "
                              "smaller --holdout")
        order = sorted(range(len(members)), key=lambda j, c=c: hashlib.blake2b(
            f"holdout:{c}:{j}".encode(), digest_size=8).digest())
        held += [members[j] for j in order[:share]]
    held.sort()
    out = set(held)
    return [i for i in range(total) if i not in out], held


def build_eval_loader(
    root: str | Path,
    model: torch.nn.Module,
    batch_size: int = 64,
    workers: int = 4,
    distributed: Any = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    synsets: str | Path | Sequence[str] | None = None,
    limit: int | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader over ``root`` with the model's evaluation transform and a class check.

    ``distributed``: ``None`` uses torch.distributed when it is initialized; a ``DistInfo`` or
    ``True``/``False`` decides explicitly. Each rank then gets every ``world_size``-th image (no
    padded duplicates). ``limit`` keeps ``limit`` images evenly spread over the data set.
    Batches are ``(images, labels, number_skipped)`` (see :func:`collate_skip`).
    """
    import torch.distributed as dist

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    on = dist.is_available() and dist.is_initialized()
    if distributed is not None:
        on = bool(getattr(distributed, "enabled", distributed)) and on
    rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
    if on and is_archive(root):  # let rank 0 extract first, then the others find it ready
        if rank == 0:
            resolve_root(root)
        dist.barrier()
    dataset = open_dataset(root, transform=model_transform(model, img_size, crop_pct),
                           synsets=synsets)
    check_classes(dataset.classes, f"model {getattr(model, 'vimstm_name', type(model).__name__)}",
                  outputs=getattr(model, "num_classes", None), labels=dataset.labels,
                  data=f"the data set in {dataset.root}")
    data: Dataset = dataset
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        data = spread_subset(dataset, limit)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=ShardSampler(len(data), rank, world),
        num_workers=max(0, workers),
        collate_fn=collate_skip,
        pin_memory=pin_memory,
        drop_last=False,
    )
