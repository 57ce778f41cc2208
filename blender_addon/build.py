"""Build the Blender extension zip: `python -m blender_addon.build [--out DIR]`.

Stages blender_addon/extension/ with runtime/ copied in as a subpackage (the wire protocol included) and the
onnxruntime and websockets wheels under wheels/, then builds and validates the zip with the blender_ext.py that
ships inside the bpy wheel.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata, util
from pathlib import Path

from runtime.cli import UsageError, check_output_folder, fail, parse, write_error

PACKAGES = Path(__file__).resolve().parents[1]  # the checkout, or site-packages when installed from a wheel
SOURCE = Path(__file__).resolve().with_name("extension")
RUNTIME = PACKAGES / "runtime"
# Outputs go beside a checkout's sources; an installed toolkit writes to the current folder and a user cache.
CHECKOUT = (PACKAGES / "pyproject.toml").is_file()
ROOT = PACKAGES if CHECKOUT else Path.cwd()
WORK = ROOT / "build" / "blender_addon" if CHECKOUT else \
    Path(os.environ.get("MOTIONVAE_CACHE", Path.home() / ".cache" / "motionvae")) / "blender_addon"
PYTHON = "3.11"  # Blender 4.2 to 5.0 embed Python 3.11
# Blender platform -> pip platform tags of the onnxruntime wheels it can load, best first.
PLATFORMS = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64"),  # Blender 4.2+ needs glibc 2.28 anyway
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_14_0_arm64",),
}
EXAMPLES = """examples:
  python -m blender_addon.build                                   # dist/motion_vae-<version>.zip, linux-x64
  python -m blender_addon.build --platform linux-x64 --platform windows-x64
  python -m blender_addon.build --wheel ~/wheels/onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl \
      --wheel ~/wheels/websockets-15.0.1-py3-none-any.whl
"""


class BuildError(Exception):
    """A build that cannot go on; the message says why and what to do."""


def blender_ext() -> Path:
    """blender_ext.py from the installed bpy wheel (it builds and validates extensions)."""
    spec = util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("bpy is not installed (pip install bpy==5.0.1): its blender_ext.py builds the extension")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise BuildError("the installed bpy has no blender_ext.py (expected bpy 4.2 or newer)")


def _run(args: list[str], what: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise BuildError(f"{what} failed: {' | '.join(tail)}")
    return done.stdout


def _download(pinned: str, cache: Path, what: str, tags: list[str]) -> None:
    """pip download one wheel for CPython 3.11 and the given pip tags into cache."""
    cache.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON,
            "--dest", str(cache), "--quiet", pinned]
    for tag in tags:
        args += ["--platform", tag]
    _run(args, f"pip download {pinned} for {what}")


def _newest(wheels: list[Path]) -> Path:
    """The wheel with the highest version among wheels of one package."""
    return max(wheels, key=lambda w: [int(p) for p in re.findall(r"\d+", w.name.split("-")[1])])


def fetch_wheel(platform: str, version: str | None, cache: Path) -> Path:
    """The onnxruntime cp311 wheel for a Blender platform, downloaded unmodified from PyPI into cache."""
    tags = PLATFORMS[platform]
    cp = "cp" + PYTHON.replace(".", "")

    def cached() -> list[Path]:
        return [w for w in cache.glob(f"onnxruntime-{version or '*'}-{cp}-*.whl") if any(t in w.name for t in tags)]

    # A pinned wheel already downloaded is reused, so rebuilds work offline.
    if not (version and cached()):
        _download(f"onnxruntime=={version}" if version else "onnxruntime", cache, platform, list(tags))
    found = cached()
    if not found:
        raise BuildError(f"pip found no {cp} onnxruntime wheel for {platform} in {cache}")
    return _newest(found)


def fetch_websockets(version: str | None, cache: Path) -> Path:
    """The pure-Python websockets wheel (the server source's client, any platform), unmodified from PyPI."""
    def cached() -> list[Path]:
        return sorted(cache.glob(f"websockets-{version or '*'}-py3-none-any.whl"))

    if not (version and cached()):
        # Platform "any" makes pip pick the py3-none-any wheel over the C-accelerated ones.
        _download(f"websockets=={version}" if version else "websockets", cache, "any platform", ["any"])
    found = cached()
    if not found:
        raise BuildError(f"pip found no py3-none-any websockets wheel in {cache}")
    return _newest(found)


def _platform_of(wheel: Path) -> str | None:
    """The Blender platform a wheel is for; None for a pure-Python wheel."""
    if wheel.name.endswith("-none-any.whl"):
        return None
    for platform, tags in PLATFORMS.items():
        if any(tag in wheel.name for tag in tags):
            return platform
    raise BuildError(f"{wheel.name}: not a wheel for any of {', '.join(PLATFORMS)}")


def stage(dest: Path, wheels: list[Path]) -> Path:
    """Lay the extension out in dest/<id>: sources, runtime/ (with its default model), wheels."""
    manifest = (SOURCE / "blender_manifest.toml").read_text(encoding="utf-8")
    package = dest / tomllib.loads(manifest)["id"]
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(SOURCE, package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (package / "runtime").mkdir()
    for source in RUNTIME.glob("*.py"):
        shutil.copy2(source, package / "runtime" / source.name)
    if (RUNTIME / "assets" / "default" / "model.json").is_file():
        shutil.copytree(RUNTIME / "assets" / "default", package / "runtime" / "assets" / "default")
    (package / "wheels").mkdir()
    for wheel in wheels:
        shutil.copy2(wheel, package / "wheels" / wheel.name)
    platforms = sorted({p for p in map(_platform_of, wheels) if p is not None})
    listed = ", ".join(f'"./wheels/{w.name}"' for w in wheels)
    for key, value in (("platforms", ", ".join(f'"{p}"' for p in platforms)), ("wheels", listed)):
        manifest, n = re.subn(rf"^{key} = \[\]$", f"{key} = [{value}]", manifest, flags=re.MULTILINE)
        if n != 1:
            raise BuildError(f"{SOURCE / 'blender_manifest.toml'}: expected one line '{key} = []' to fill in")
    (package / "blender_manifest.toml").write_text(manifest, encoding="utf-8")
    return package


def build(out: Path, wheels: list[Path]) -> Path:
    """Stage, build and validate the extension; returns the zip. wheels must hold onnxruntime and websockets."""
    for needed in ("onnxruntime", "websockets"):
        if not any(w.name.startswith(f"{needed}-") for w in wheels):
            raise BuildError(f"no {needed} wheel to bundle: the extension imports it")
    tool = blender_ext()
    package = stage(WORK, wheels)
    meta = tomllib.loads((package / "blender_manifest.toml").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{meta['id']}-{meta['version']}.zip"
    _run([sys.executable, str(tool), "build", "--source-dir", str(package), "--output-filepath", str(archive)],
         "blender_ext.py build")
    _run([sys.executable, str(tool), "validate", str(archive)], f"blender_ext.py validate {archive.name}")
    return archive


def installed(package: str) -> str | None:
    """The version of package this environment runs (and tests) the extension's code with."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m blender_addon.build", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the zip (default dist/)")
    p.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                   help="Blender platform to bundle onnxruntime for: %(choices)s; repeat for several "
                        "(default linux-x64)")
    p.add_argument("--onnxruntime", metavar="VERSION", default=installed("onnxruntime"),
                   help="onnxruntime version to bundle (default: the one installed here, %(default)s)")
    p.add_argument("--websockets", metavar="VERSION", default=installed("websockets"),
                   help="websockets version to bundle (default: the one installed here, %(default)s)")
    p.add_argument("--wheel", type=Path, action="append", default=[],
                   help="bundle this wheel instead of downloading one (offline builds); repeatable; onnxruntime "
                        "is then not downloaded, websockets only when no websockets wheel is given")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 when the build cannot be made."""
    args = parse(build_parser(), argv)
    try:
        missing = [w for w in args.wheel if not w.is_file()]
        if missing:
            raise BuildError(f"{missing[0]}: no such wheel")
        if args.out.exists() and not args.out.is_dir():
            raise BuildError(f"{args.out}: exists and is not a folder; --out names the folder for the zip")
        check_output_folder(next(p for p in (args.out, *args.out.parents) if p.exists()), args.out)
        cache = WORK / "wheel-cache"
        wheels = args.wheel or [fetch_wheel(p, args.onnxruntime, cache) for p in args.platform or ["linux-x64"]]
        if not any(w.name.startswith("websockets-") for w in wheels):
            wheels.append(fetch_websockets(args.websockets, cache))
        archive = build(args.out, wheels)
    except (BuildError, UsageError) as e:
        return fail(e)
    except OSError as e:
        return fail(write_error(e, args.out))
    print(f"built and validated {archive} ({archive.stat().st_size / 1e6:.1f} MB; wheels: "
          f"{', '.join(w.name for w in wheels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
