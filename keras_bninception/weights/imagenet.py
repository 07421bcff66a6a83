"""The ImageNet weights: TF-slim's published ``inception_v2`` checkpoint, fetched once and checked.

    path = imagenet.checkpoint()  # ~/.keras/models/inception_v2_2016_08_28/inception_v2.ckpt

`checkpoint` downloads ``inception_v2_2016_08_28.tar.gz`` (TF-slim model zoo) with
`keras.utils.get_file` into the Keras cache (``$KERAS_HOME/models``, by default
``~/.keras/models``), checks its size and SHA-384 before opening it, and unpacks only the
checkpoint files (regular files named ``inception_v2.ckpt*``) into
``models/inception_v2_2016_08_28/`` next to it; later calls find the unpacked checkpoint and
neither download nor hash again. A download of the wrong size or hash is deleted and the error
names both hashes. An archive with a member that could land outside that directory (an absolute
path, ``..``, a link) is refused whole.

Without network access, put a copy where `checkpoint` looks (the tarball in ``models/``) or pass
it directly: ``BNInception(weights="/path/to/inception_v2_2016_08_28.tar.gz")`` (checked against
the same size and hash) or the unpacked ``weights="/path/to/inception_v2.ckpt"``.

The SHA-384 is the one OpenVINO's Open Model Zoo records for this file
(models/public/googlenet-v2-tf/model.yml).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tarfile
import tempfile

import keras

from keras_bninception.weights.errors import WeightsError

CACHE_SUBDIR = "models"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Archive:
    """A published checkpoint tarball: where it is, what it must be, what it holds.

    Attributes:
        url: where it is downloaded from.
        size: its size in bytes.
        sha384: its SHA-384, lowercase hex.
        checkpoint_name: the checkpoint (a V1 file or a V2 prefix) inside it.
        classes: the checkpoint's classifier width (TF-slim's: 1000 + background).
        depth_multiplier: the width it was trained at.
    """

    url: str
    size: int
    sha384: str
    checkpoint_name: str = "inception_v2.ckpt"
    classes: int = 1001
    depth_multiplier: float = 1.0

    @property
    def file_name(self) -> str:
        """The tarball's name in the cache, the last component of `url`."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        """The tarball's name without ``.tar.gz`` / ``.tgz``: the unpacked directory's name."""
        for suffix in (".tar.gz", ".tgz", ".tar"):
            if self.file_name.endswith(suffix):
                return self.file_name[: -len(suffix)]
        return self.file_name


IMAGENET = Archive(
    url="https://download.tensorflow.org/models/inception_v2_2016_08_28.tar.gz",
    size=41_577_079,
    sha384="c0b2efbae8fc5e237ae67637dca3f311d4b4f7da576b56067e83d95c398a2fccd50baff9cc0de64335f4d7b78e1adb07",
)


def cache_dir() -> str:
    """The Keras cache, where downloads go: ``$KERAS_HOME`` (read now), else ``~/.keras``."""
    return os.environ.get("KERAS_HOME") or keras.config.keras_home()


def checkpoint(archive: Archive | None = None) -> str:
    """The path of `archive`'s checkpoint (default `IMAGENET`), downloaded and unpacked once.

    Raises:
        WeightsError: no download (one line naming the URL and how to pass a local copy), a
            download or cached tarball of the wrong size or hash (deleted; both hashes named),
            or an archive with unsafe members or without the checkpoint.
    """
    archive = archive or IMAGENET
    directory = _models_dir()
    unpacked = os.path.join(directory, archive.stem)
    if _holds_checkpoint(unpacked, archive):
        return os.path.join(unpacked, archive.checkpoint_name)
    try:
        path = keras.utils.get_file(
            archive.file_name, archive.url, cache_subdir=CACHE_SUBDIR, cache_dir=cache_dir()
        )
    except Exception as error:  # noqa: BLE001 - get_file raises a bare Exception on URL errors
        reason = " ".join(str(error).split())[:200]
        raise WeightsError(
            f"Cannot download the ImageNet weights from {archive.url} ({reason}). Without "
            f"network access, download {archive.file_name} elsewhere and pass its path (or that "
            f'of the unpacked {archive.checkpoint_name}) instead of "imagenet", e.g. '
            f'weights="/path/to/{archive.file_name}" or --init_checkpoint=/path/to/'
            f"{archive.file_name}; or put it in {directory}"
        ) from error
    verify(path, archive, delete=True)
    # get_file falls back to /tmp/.keras when the cache is not writable: unpack beside the file.
    return unpack(path, archive, os.path.join(os.path.dirname(path), archive.stem))


def _models_dir() -> str:
    """``<cache>/models``, created (get_file would fall back to /tmp/.keras if it were missing)."""
    directory = os.path.join(os.path.expanduser(cache_dir()), CACHE_SUBDIR)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        pass  # not writable: get_file uses its fallback
    return directory


def _holds_checkpoint(directory: str, archive: Archive) -> bool:
    # Written by `unpack` through a rename, so it exists only complete (and verified).
    name = os.path.join(directory, archive.checkpoint_name)
    return os.path.isfile(name) or os.path.isfile(name + ".index")


def sha384(path: str) -> str:
    """The SHA-384 of the file at `path`, lowercase hex."""
    digest = hashlib.sha384()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str, archive: Archive, delete: bool) -> None:
    """Checks the size and SHA-384 of the tarball at `path` against `archive`.

    Raises:
        WeightsError: naming the expected and the actual hash and size; the file is deleted
            first when `delete` (a download, not a user's own file).
    """
    size, got = os.path.getsize(path), sha384(path)
    if size == archive.size and got == archive.sha384:
        return
    if delete:
        os.remove(path)
    raise WeightsError(
        f"{path} is not {archive.file_name}: expected SHA-384 {archive.sha384} "
        f"({archive.size:,} bytes), got SHA-384 {got} ({size:,} bytes)"
        + (f"; deleted it, download again from {archive.url}" if delete else "")
    )


def _checkpoint_members(tar: tarfile.TarFile, archive: Archive) -> list[tarfile.TarInfo]:
    """The archive's checkpoint files; WeightsError when any member is unsafe to unpack."""
    members = []
    for member in tar.getmembers():
        name = member.name
        parts = name.replace("\\", "/").split("/")
        unsafe = (
            os.path.isabs(name)
            or name.startswith(("/", "\\"))
            or ".." in parts
            or member.issym()
            or member.islnk()
            or not (member.isfile() or member.isdir())
        )
        if unsafe:
            raise WeightsError(
                f"Refusing to unpack {tar.name}: its member {name!r} is a link, a device or a "
                "path outside the archive's directory"
            )
        if member.isfile() and parts[-1].startswith(archive.checkpoint_name):
            members.append(member)
    if not members:
        raise WeightsError(f"{tar.name} holds no {archive.checkpoint_name} checkpoint")
    return members


def unpack(path: str, archive: Archive, directory: str) -> str:
    """Unpacks the checkpoint files of the tarball `path` flat into `directory`; returns the
    checkpoint's path. Nothing is written unless every member is safe, and `directory` appears
    whole (filled as a temporary directory beside it, then renamed)."""
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise WeightsError(f"{path} is not a readable tar archive: {error}") from error
    work = tempfile.mkdtemp(prefix=f".{archive.stem}-", dir=parent)
    try:
        with tar:
            for member in _checkpoint_members(tar, archive):
                target = os.path.join(work, os.path.basename(member.name))
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
        if not _holds_checkpoint(work, archive):
            raise WeightsError(f"{path} holds no {archive.checkpoint_name} checkpoint")
        if not _holds_checkpoint(directory, archive):  # else another process was first
            shutil.rmtree(directory, ignore_errors=True)
            try:
                os.rename(work, directory)
            except OSError:
                if not _holds_checkpoint(directory, archive):  # not another process's
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return os.path.join(directory, archive.checkpoint_name)


def from_tarball(path: str, archive: Archive | None = None) -> str:
    """A user's local copy of the tarball: checked like a download (but never deleted), unpacked
    into the cache once; returns the checkpoint's path."""
    archive = archive or IMAGENET
    directory = os.path.join(_models_dir(), archive.stem)
    if not _holds_checkpoint(directory, archive):
        verify(path, archive, delete=False)
        unpack(path, archive, directory)
    return os.path.join(directory, archive.checkpoint_name)
