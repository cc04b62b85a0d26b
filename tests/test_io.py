"""Output folders: nothing half-written, nothing deleted that timm-coded did not write, the umask honoured."""
import os
import signal
import stat

import pytest

from timm_coded._io import OUTPUTS_RECORD, StagedOutput, sigterm_as_keyboard_interrupt, written_files
from timm_coded.errors import TimmCodedError


def _stage(out, files, overwrite=False, replace_own=True):
    staged = StagedOutput(out, overwrite=overwrite, replace_own=replace_own)
    for name, text in files.items():
        (staged.tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (staged.tmp / name).write_text(text)
    return staged


def test_rerun_replaces_and_removes_only_its_own_files(tmp_path):
    out = tmp_path / 'run'
    _stage(out, {'report.json': '1', 'figures/a.png': 'a', 'figures/b.png': 'b'}).commit()
    assert written_files(out) == {'report.json', 'figures/a.png', 'figures/b.png'}
    (out / 'notes.txt').write_text('mine')
    (out / 'figures' / 'annotated.png').write_text('mine too')
    (out / 'mine').mkdir()
    result = _stage(out, {'report.json': '2', 'figures/a.png': 'A'}).commit()
    assert result['removed'] == ['figures/b.png']
    assert (out / 'report.json').read_text() == '2' and (out / 'figures' / 'a.png').read_text() == 'A'
    assert (out / 'notes.txt').read_text() == 'mine' and (out / 'figures' / 'annotated.png').exists()
    assert (out / 'mine').is_dir() and not (out / 'figures' / 'b.png').exists()
    assert [p.name for p in tmp_path.iterdir()] == ['run']  # no staging folder left behind


def test_foreign_files_are_never_replaced_and_own_files_only_with_overwrite(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'report.json').write_text('the user wrote this')
    (out / 'cat').mkdir()
    (out / 'cat' / 'model.safetensors').write_text('the user put this here')
    for overwrite in (False, True):
        staged = StagedOutput(out, overwrite=overwrite)
        with pytest.raises(TimmCodedError, match=r'already holds report\.json, not written by timm-coded, which never'):
            staged.check(['report.json'])
        with pytest.raises(TimmCodedError, match=r'already holds cat/model\.safetensors, not written by timm-coded'):
            staged.check(['cat'])
        staged.discard()
    assert (out / 'report.json').read_text() == 'the user wrote this'
    (out / 'empty').mkdir()
    _stage(out, {'empty/x.json': '1', 'y.json': '2'}).commit()  # an empty folder holds nothing to lose
    staged = _stage(out, {'y.json': '3'}, replace_own=False)
    with pytest.raises(TimmCodedError, match=r'already holds y\.json from an earlier run; pass --overwrite'):
        staged.commit()
    staged.discard()
    _stage(out, {'y.json': '3'}, overwrite=True, replace_own=False).commit()
    assert (out / 'y.json').read_text() == '3' and OUTPUTS_RECORD in os.listdir(out)
    assert (out / 'report.json').read_text() == 'the user wrote this'


def test_failure_inside_the_block_discards_staging_and_created_parents(tmp_path):
    out = tmp_path / 'a' / 'b' / 'run'
    with pytest.raises(RuntimeError):
        with StagedOutput(out) as staged:
            (staged.tmp / 'x').write_text('partial')
            raise RuntimeError('boom')
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        staged = _stage(tmp_path / 'run', {'sub/model.safetensors': 'w'})
        staged.commit()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / 'run').stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / 'run' / OUTPUTS_RECORD).stat().st_mode) == 0o644


def test_sigterm_runs_the_same_cleanup_as_ctrl_c(tmp_path):
    out = tmp_path / 'run'
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_keyboard_interrupt(), StagedOutput(out) as staged:
            (staged.tmp / 'x').write_text('partial')
            os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
