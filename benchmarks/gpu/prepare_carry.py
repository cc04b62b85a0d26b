"""Fill `.gpu-carry/` (git-ignored) with what benchmarks/gpu/oneshot.py needs on the GPU machine.

The device machine has no network and gets only the working tree plus the paths named in `carry`
(64 MiB in all). Run this here, on the development machine, before the GPU call:

    python benchmarks/gpu/prepare_carry.py \\
        --cifar-tar ../shared/data/cifar10/train.tar.gz \\
        --timm-git /work/.mirror/huggingface+pytorch-image-models/repo     # or --timm-scripts DIR

It writes
    .gpu-carry/train.tar.gz                 CIFAR-10 training JPEGs (train/<class>/<NNNN>.jpg), copied
    .gpu-carry/timm-scripts/train.py        timm's train.py / validate.py (not in the timm wheel)
    .gpu-carry/timm-scripts/validate.py
    .gpu-carry/site/timm, timm-*.dist-info  the timm release the tests here run against (pure Python),
                                            so the GPU run does not depend on the image's timm version
    .gpu-carry/MANIFEST.json                sizes, sha256, where each came from
and checks that .gpu-carry is git-ignored and that working tree + carry fit in 64 MiB.
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 64 * 2 ** 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob('*') if p.is_file())


def working_tree_bytes() -> int:
    """Tracked + untracked-not-ignored files: what the device tool sends besides `carry`."""
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=REPO, check=True,
                         capture_output=True).stdout.decode()
    return sum((REPO / p).stat().st_size for p in out.split('\0') if p and (REPO / p).is_file())


def copy_timm_scripts(dest: Path, scripts_dir: Path = None, git_dir: Path = None, rev: str = 'HEAD') -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    source = {}
    for name in ('train.py', 'validate.py'):
        if scripts_dir is not None:
            shutil.copyfile(scripts_dir / name, dest / name)
            source[name] = str(scripts_dir / name)
        else:
            text = subprocess.run(['git', '--git-dir', str(git_dir), 'show', f'{rev}:{name}'], check=True,
                                  capture_output=True).stdout
            (dest / name).write_bytes(text)
            commit = subprocess.run(['git', '--git-dir', str(git_dir), 'rev-parse', rev], check=True,
                                    capture_output=True, text=True).stdout.strip()
            version = subprocess.run(['git', '--git-dir', str(git_dir), 'show', f'{rev}:timm/version.py'],
                                     capture_output=True, text=True).stdout.strip()
            source[name] = f'{git_dir} @ {commit} ({version})'
    return source


def copy_timm_package(dest: Path, python: str) -> dict:
    """The timm package (and its dist-info) that `python` imports, without __pycache__."""
    info = json.loads(subprocess.run(
        [python, '-c', 'import json, os, timm, importlib.metadata as m; d = m.distribution("timm"); '
                       'print(json.dumps({"version": timm.__version__, "dir": os.path.dirname(timm.__file__), '
                       '"dist_info": str(d._path)}))'],
        check=True, capture_output=True, text=True, env={'TIMM_CODED_AUTOLOAD': '0', 'PATH': '/usr/bin:/bin'}
    ).stdout.strip().splitlines()[-1])
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
    shutil.copytree(info['dir'], dest / 'timm', ignore=ignore)
    shutil.copytree(info['dist_info'], dest / Path(info['dist_info']).name, ignore=ignore)
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cifar-tar', type=Path, default=REPO.parent / 'shared' / 'data' / 'cifar10' / 'train.tar.gz')
    src = p.add_mutually_exclusive_group()
    src.add_argument('--timm-scripts', type=Path, help='a folder holding train.py and validate.py')
    src.add_argument('--timm-git', type=Path, help='a git directory of huggingface/pytorch-image-models')
    p.add_argument('--timm-rev', default='HEAD', help='revision for --timm-git (default HEAD)')
    p.add_argument('--no-timm-package', action='store_true', help='do not carry timm itself (use the image\'s)')
    p.add_argument('--python', default=sys.executable, help='the interpreter whose timm is carried')
    p.add_argument('--dest', type=Path, default=REPO / '.gpu-carry')
    args = p.parse_args()

    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    ignored = subprocess.run(['git', 'check-ignore', '-q', str(dest / 'x')], cwd=REPO).returncode == 0
    if not ignored:
        print(f'warning: {dest} is not git-ignored: it would travel twice (add "/.gpu-carry/" to .gitignore)')
    manifest = {'files': {}}
    if not args.cifar_tar.is_file():
        sys.exit(f'no CIFAR-10 archive at {args.cifar_tar}')
    shutil.copyfile(args.cifar_tar, dest / 'train.tar.gz')
    manifest['files']['train.tar.gz'] = {'source': str(args.cifar_tar.resolve()), 'bytes': args.cifar_tar.stat().st_size,
                                         'sha256': sha256(dest / 'train.tar.gz')}
    if args.timm_scripts or args.timm_git:
        sources = copy_timm_scripts(dest / 'timm-scripts', args.timm_scripts, args.timm_git, args.timm_rev)
        for name, source in sources.items():
            path = dest / 'timm-scripts' / name
            manifest['files'][f'timm-scripts/{name}'] = {'source': source, 'bytes': path.stat().st_size,
                                                         'sha256': sha256(path)}
    else:
        print('no --timm-scripts / --timm-git: the train.py stage will be skipped on the GPU machine')
    if not args.no_timm_package:
        info = copy_timm_package(dest / 'site', args.python)
        manifest['files']['site'] = {'source': info['dir'], 'timm_version': info['version'],
                                     'bytes': tree_bytes(dest / 'site')}
    git = lambda *a: subprocess.run(['git', *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    manifest['checkout'] = {'commit': git('rev-parse', 'HEAD') or None,
                            'modified_or_untracked_files': len(git('status', '--porcelain').splitlines()),
                            'prepared': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    carry = tree_bytes(dest)
    tree = working_tree_bytes()
    manifest.update(carry_bytes=carry, working_tree_bytes=tree, limit_bytes=LIMIT_BYTES)
    (dest / 'MANIFEST.json').write_text(json.dumps(manifest, indent=1) + '\n')
    print(json.dumps(manifest, indent=1))
    total = carry + tree
    print(f'working tree {tree / 2**20:.1f} MiB + carry {carry / 2**20:.1f} MiB = {total / 2**20:.1f} MiB '
          f'(limit {LIMIT_BYTES / 2**20:.0f} MiB)')
    if total > LIMIT_BYTES:
        print('TOO LARGE: drop the timm package (--no-timm-package) or ignore other untracked files')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
