"""Container images built on this machine, with no registry: buildah with vfs storage under the cache
root and chroot isolation, every image cached by the content of its inputs, so a second run costs
nothing.

    base = base_image()        # Debian minbase + python3 from the machine's own apt sources
    op = operator_image()      # operator/Dockerfile FROM that base, every RUN step executed
    op.name, op.archive        # "localhost/flowkeeper:<key>", a docker-archive for `ctr images import`
    pause = scratch_image("pause", {"/pause": binary}, entrypoint=["/pause"])
    app = dockerfile_image("consumer", context, dockerfile, build_args={"BASE": base.name}, bases=[base])

How, and why:
- An image's tag is its cache key: a hash of everything it is made from (the Dockerfile, the files of
  the build context that .dockerignore lets through, build arguments, labels, the ids of the images it
  is built FROM; for a scratch image its files and configuration). The docker-archive and a small
  record of the image (`<repository>-<key>.json`) are kept in `<cache root>/images/archives`; when
  the record exists nothing is built. The record is written last, so a killed build leaves no record.
  Building an image removes the images of its repository that no run used for two days.
- The archive is what containerd 1.6 imports: `buildah push NAME docker-archive:FILE:NAME` stores the
  name in RepoTags, which `ctr images import` uses as the image's name.
- Builds hold an exclusive lock on the storage (another session building the same image waits, then
  finds it cached); whoever takes the lock first removes what a killed build left (working
  containers, scratch folders and the mounts of a chroot in them).
- Dockerfile builds never pull (`--pull-never`): the images they are FROM are given as `bases` and
  loaded into the storage from their archives if needed. PyPI is reached as the host reaches it: the
  host's CA bundle is bind-mounted read-only over the image's (a TLS-intercepting proxy's CA may be
  only there; it does not end up in the image) and pip's index/proxy settings of the environment and
  pip configuration are passed as build arguments (not part of the key: they say where, not what).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from docker.utils.build import exclude_paths

from tests.support.cache import cache_root

REPO = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = REPO / "operator" / "Dockerfile"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The system's CA bundle on Debian, on the host and in the images built FROM a Debian base.
HOST_CA_BUNDLE = IMAGE_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip settings passed through to RUN steps when the environment or pip's configuration has them.
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "default-timeout", "proxy")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
BUILD_TIMEOUT = 1800
REVISION_LABEL = "io.flowkeeper.test.revision"
UNUSED_FOR = 2 * 24 * 3600
SCRATCH_PREFIX = "scratch-"


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    name: str  # repository:tag, the tag being the cache key
    archive: Path  # docker-archive with `name` in its RepoTags
    id: str  # the image id (config digest) as the archive holds it

    @property
    def repository(self) -> str:
        return self.name.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.name.rpartition(":")[2]


def images_root() -> Path:
    return cache_root() / "images"


def content_key(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------------------- buildah


def buildah(*args: str, timeout: float = BUILD_TIMEOUT) -> str:
    """Runs buildah on the project's own storage; returns its standard output."""
    root = images_root()
    argv = ["buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "vfs", *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
    )
    if result.returncode != 0:
        raise BuildError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}")
    return result.stdout


class _StorageLock:
    """An exclusive flock on the storage, re-entrant within this process (builds nest: an image
    built FROM another builds that one first)."""

    def __init__(self) -> None:
        self._guard = threading.RLock()
        self._depth = 0
        self._file: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._guard:
            if self._depth == 0:
                images_root().mkdir(parents=True, exist_ok=True)
                self._file = os.open(images_root() / "storage.lock", os.O_RDWR | os.O_CREAT, 0o644)
            self._depth += 1
            try:
                if self._depth == 1:
                    fcntl.flock(self._file, fcntl.LOCK_EX)
                    _remove_leftovers()
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._file is not None:
                    os.close(self._file)  # releases the flock
                    self._file = None


storage_lock = _StorageLock()


def _remove_leftovers() -> None:
    """Working containers and scratch folders only live while their builder holds the lock: any
    found when taking it are a killed run's (a killed mmdebstrap may leave mounts in its chroot)."""
    if (images_root() / "storage").exists() and buildah("containers", "--quiet").strip():
        buildah("rm", "--all")
    for scratch in images_root().glob(f"{SCRATCH_PREFIX}*"):
        for mountpoint in sorted(_mounts_under(scratch), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, timeout=60)
        if still := _mounts_under(scratch):  # never delete through a mount (a chroot binds host folders)
            raise BuildError(f"cannot unmount {still} of a killed build")
        shutil.rmtree(scratch, ignore_errors=True)


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4].replace("\\040", " ") for line in mounts]
    return [point for point in points if point.startswith(prefix)]


def in_storage(name: str) -> bool:
    try:
        buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", name)
        return True
    except BuildError:
        return False


def load(image: Image) -> None:
    """Puts `image` into the storage from its archive, if the storage lacks it (a wiped storage, or
    an archive another machine made)."""
    with storage_lock.held():
        if not in_storage(image.name):
            buildah("pull", "--quiet", f"docker-archive:{image.archive}")
            if not in_storage(image.name):
                buildah("tag", image.id, image.name)


def _archive_image_id(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    return "sha256:" + manifest[0]["Config"].removesuffix(".json").removeprefix("sha256:")


def _cached(repository: str, key: str, build: Callable[[str], None]) -> Image:
    """The image `localhost/<repository>:<key>`: from its record when built before, else built by
    `build(name)` into the storage and exported."""
    name = f"localhost/{repository}:{key}"
    folder = images_root() / "archives"
    archive = folder / f"{repository}-{key}.tar"
    record = folder / f"{repository}-{key}.json"

    def recorded() -> Image | None:
        if record.exists() and archive.exists():
            os.utime(record)  # last used: see _prune
            data = json.loads(record.read_text())
            return Image(name=data["name"], archive=archive, id=data["id"])
        return None

    if found := recorded():
        return found
    with storage_lock.held():
        if found := recorded():
            return found
        folder.mkdir(parents=True, exist_ok=True)
        if not in_storage(name):
            build(name)
        partial = archive.with_name(archive.name + ".partial")
        partial.unlink(missing_ok=True)
        buildah("push", "--quiet", name, f"docker-archive:{partial}:{name}")
        partial.rename(archive)
        image = Image(name=name, archive=archive, id=_archive_image_id(archive))
        staging = record.with_name(record.name + ".partial")
        staging.write_text(json.dumps({"name": image.name, "id": image.id}))
        staging.rename(record)
        _prune(repository, keep=record)
        return image


def _prune(repository: str, keep: Path) -> None:
    """Removes the images of `repository` that no run used for UNUSED_FOR seconds (the inputs
    changed since), so the cache does not grow with every change of the sources."""
    for record in (images_root() / "archives").glob(f"{repository}-*.json"):
        if record == keep or time.time() - record.stat().st_mtime < UNUSED_FOR:
            continue
        name = json.loads(record.read_text())["name"]
        if name.rpartition(":")[0] != f"localhost/{repository}":
            continue  # another repository whose name starts the same way
        with contextlib.suppress(BuildError):
            buildah("rmi", "--force", name)
        record.unlink(missing_ok=True)
        (images_root() / "archives" / f"{record.stem}.tar").unlink(missing_ok=True)


# ------------------------------------------------------------------------------- images from scratch


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def buildah_args(self) -> list[str]:
        args = ["--entrypoint", json.dumps(list(self.entrypoint)), "--cmd", json.dumps(list(self.cmd))]
        args += [a for k, v in self.env for a in ("--env", f"{k}={v}")]
        args += [a for k, v in self.labels for a in ("--label", f"{k}={v}")]
        if self.user:
            args += ["--user", self.user]
        return args


def _commit_from_scratch(name: str, files: Mapping[str, Path], config: ImageConfig, rootfs_tar: Path | None = None) -> None:
    """A one-layer image: `rootfs_tar` unpacked at /, then each host file or folder copied to its path."""
    container = buildah("from", "--quiet", "scratch").strip()
    try:
        if rootfs_tar is not None:
            buildah("add", "--quiet", container, str(rootfs_tar), "/")
        for destination, source in files.items():
            buildah("copy", "--quiet", container, str(source), destination)
        buildah("config", *config.buildah_args(), container)
        buildah("commit", "--quiet", "--rm", container, name)
    except BaseException:
        with contextlib.suppress(BuildError):
            buildah("rm", container)
        raise


def _tree_digest(path: Path) -> list[tuple[str, str, int]]:
    """(relative path, content digest, mode) of a file or of every file under a folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
    return [
        (p.relative_to(path).as_posix() if p != path else "", os.readlink(p) if p.is_symlink() else file_digest(p), p.lstat().st_mode)
        for p in files
    ]


def scratch_image(
    repository: str, files: Mapping[str, Path], *, entrypoint: Sequence[str], cmd: Sequence[str] = (),
    env: Mapping[str, str] | None = None, user: str | None = None,
) -> Image:
    """An image of only `files` (image path -> host file or folder), cached by their content.
    The pause image: `scratch_image("pause", {"/pause": static_binary}, entrypoint=["/pause"])`."""
    config = ImageConfig(tuple(entrypoint), tuple(cmd), tuple(sorted((env or {}).items())), user)
    key = content_key("scratch", {dest: _tree_digest(Path(src)) for dest, src in files.items()}, asdict(config))
    return _cached(repository, key, lambda name: _commit_from_scratch(name, files, config))


# ----------------------------------------------------------------------------- images from Dockerfiles


def context_digest(context: Path, dockerfile: Path) -> list[tuple[str, str, int]]:
    """(path, digest, mode) of every file of the build context that .dockerignore lets through."""
    ignore = context / ".dockerignore"
    patterns = [
        line.strip() for line in (ignore.read_text().splitlines() if ignore.exists() else [])
        if line.strip() and not line.lstrip().startswith("#")
    ]
    relative_dockerfile = dockerfile.resolve().relative_to(context.resolve()).as_posix()
    kept = sorted(p for p in exclude_paths(str(context), patterns, relative_dockerfile) if not (context / p).is_dir())
    return [(p, file_digest(context / p), (context / p).lstat().st_mode & 0o111) for p in kept]


def _pip_settings() -> dict[str, str]:
    """pip's settings on this host (environment and configuration files), by option name."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    settings = {}
    for line in listed.stdout.splitlines():
        setting, _, value = line.partition("=")
        settings[setting.rpartition(".")[2]] = value.strip().strip("'\"")
    return settings


def pip_access() -> tuple[dict[str, str], Path]:
    """What lets pip in a RUN step reach the index the way pip on this host does: build arguments
    (index and proxy settings from the environment or pip's configuration, when there are any; PIP_CERT
    naming IMAGE_CA_BUNDLE) and the host's certificate bundle to mount there (pip's own `cert`
    setting, else the system's)."""
    settings = _pip_settings()
    args = {f"PIP_{option.upper().replace('-', '_')}": settings[option] for option in PIP_SETTINGS if settings.get(option)}
    args["PIP_CERT"] = str(IMAGE_CA_BUNDLE)
    args.update({variable: os.environ[variable] for variable in PROXY_VARIABLES if os.environ.get(variable)})
    return args, Path(settings.get("cert") or HOST_CA_BUNDLE)


def dockerfile_image(
    repository: str, context: Path, dockerfile: Path, *, build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None, bases: Sequence[Image] = (), pypi: bool = True,
) -> Image:
    """`buildah bud --pull-never` of `dockerfile` over `context`, cached by content. Every image a
    FROM names must be one of `bases` (loaded into the storage before the build). With `pypi`, RUN
    steps reach PyPI through the host's CA bundle and pip settings (see pip_access)."""
    build_args, labels = dict(build_args or {}), dict(labels or {})
    key = content_key(
        "dockerfile", file_digest(dockerfile), context_digest(context, dockerfile), sorted(build_args.items()),
        sorted(labels.items()), sorted(b.id for b in bases),
    )

    def build(name: str) -> None:
        for base in bases:
            load(base)
        argv = ["bud", "--quiet", "--pull-never", "--isolation", "chroot", "--file", str(dockerfile), "--tag", name]
        access, ca_bundle = pip_access() if pypi else ({}, None)
        argv += [a for k, v in {**access, **build_args}.items() for a in ("--build-arg", f"{k}={v}")]
        argv += [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        if ca_bundle:
            argv += ["--volume", f"{ca_bundle}:{IMAGE_CA_BUNDLE}:ro"]
        buildah(*argv, str(context))

    return _cached(repository, key, build)


# ------------------------------------------------------------------------------ the project's images


def debian_suite() -> str:
    """The machine's Debian release (its codename, for example "bookworm")."""
    return platform.freedesktop_os_release()["VERSION_CODENAME"]


@functools.cache
def debian_sources(suite: str) -> tuple[str, ...]:
    """One-line apt sources for `suite` and its -updates/-security suites, as the machine's apt
    configuration has them: the image comes from the mirror the host uses. (Asked once per process:
    apt takes a second or two to answer.)"""
    listed = subprocess.run(["apt-get", "indextargets", "--format", INDEXTARGETS_FORMAT],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    sources = sources_of_suite(listed, suite)
    if not sources:
        raise BuildError(f"apt on this machine has no source for {suite}")
    return tuple(sources)


INDEXTARGETS_FORMAT = "$(TARGET_OF) $(REPO_URI) $(RELEASE) $(COMPONENT)"


def sources_of_suite(indextargets: str, suite: str) -> list[str]:
    """`deb URI SUITE COMPONENTS...` lines from `apt-get indextargets --format INDEXTARGETS_FORMAT`
    output, for `suite` and its -updates and -security suites (other repositories left out); none
    when `suite` itself is missing."""
    components: dict[tuple[str, str], list[str]] = {}
    for line in indextargets.splitlines():
        target_of, uri, release, component = (line.split() + ["", "", "", ""])[:4]
        if target_of == "deb" and release in (suite, f"{suite}-updates", f"{suite}-security"):
            found = components.setdefault((uri, release), [])
            if component and component not in found:
                found.append(component)
    if not any(release == suite for _, release in components):
        return []
    return [f"deb {uri} {release} {' '.join(sorted(comps))}" for (uri, release), comps in sorted(components.items())]


def base_image() -> Image:
    """Debian minbase with python3, python3-venv and ca-certificates, from the machine's apt sources,
    cached by (suite, packages, sources). About 2 minutes cold."""
    suite = debian_suite()
    sources = debian_sources(suite)
    mmdebstrap = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                  # manuals and translations: no use in a container
                  "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
                  "--dpkgopt=path-include=/usr/share/locale/locale.alias"]
    config = ImageConfig(cmd=("python3",), env=(("LANG", "C.UTF-8"),))

    def build(name: str) -> None:
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=images_root()) as scratch:
            rootfs = Path(scratch) / "rootfs.tar"
            # its chroot in the scratch folder too, so a killed run's mounts are found there
            result = subprocess.run([*mmdebstrap, suite, str(rootfs), *sources], capture_output=True, text=True,
                                    timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL, env={**os.environ, "TMPDIR": scratch})
            if result.returncode != 0:
                raise BuildError(f"mmdebstrap failed ({result.returncode}):\n{result.stderr[-6000:]}")
            _commit_from_scratch(name, {}, config, rootfs_tar=rootfs)

    return _cached("flowkeeper-base", content_key("base", suite, mmdebstrap, list(sources), asdict(config)), build)


def relabelled(image: Image, labels: Mapping[str, str]) -> Image:
    """`image` with `labels` added: the same layers (and an empty one: a commit always adds a layer)
    and program, a different image (id and tag), without a rebuild."""
    def build(name: str) -> None:
        load(image)
        container = buildah("from", "--quiet", "--pull-never", image.name).strip()
        try:
            buildah("config", *[a for k, v in labels.items() for a in ("--label", f"{k}={v}")], container)
            buildah("commit", "--quiet", "--rm", container, name)
        except BaseException:
            with contextlib.suppress(BuildError):
                buildah("rm", container)
            raise

    return _cached(image.repository.removeprefix("localhost/"), content_key("relabelled", image.id, sorted(labels.items())), build)


def operator_image(revision: str | None = None) -> Image:
    """operator/Dockerfile built FROM base_image(). A `revision` gives a changed image of the same
    code (label REVISION_LABEL differs, so do its id and tag): what an upgrade test rolls out."""
    base = base_image()
    image = dockerfile_image("flowkeeper", REPO, OPERATOR_DOCKERFILE, build_args={"BASE": base.name}, bases=[base])
    return relabelled(image, {REVISION_LABEL: revision}) if revision else image


def remove_cache() -> None:
    """Forgets every image (storage and archives): the next use builds from nothing."""
    with storage_lock.held():
        shutil.rmtree(images_root() / "storage", ignore_errors=True)
        shutil.rmtree(images_root() / "archives", ignore_errors=True)
