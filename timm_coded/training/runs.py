"""A training run's folder, as `benchmarks/cifar10_zoo.py` writes it: `model.safetensors` + `history.json`.

One reader for everything that continues a run (a warm restart) or ships it, so that each checks
the same things: the record parses and names a model, the checkpoint is the one the record was
written with (its sha256, stored after the weights are in place, so a run killed between the two
writes is caught), and each training stage's epochs are the ones it ran (`--max-minutes` can stop a
stage before its schedule ends).
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Union

from ..errors import IntegrityError, TimmCodedError

__all__ = ['HISTORY_NAME', 'CHECKPOINT_NAME', 'read_run', 'run_stages', 'stage_epochs']

HISTORY_NAME = 'history.json'
CHECKPOINT_NAME = 'model.safetensors'
_REQUIRED = ('model', 'model_kwargs', 'history')


def read_run(folder: Union[str, Path]) -> Dict[str, Any]:
    """The run record of `folder`, after checking its checkpoint against the recorded sha256.

    Raises TimmCodedError (one line) for a folder that is not a run, a malformed record or stages
    that do not add up to its history, and IntegrityError for a checkpoint that is not the one
    the record was written with. Records from before checksums were kept (no `checkpoint_sha256`)
    are accepted; their weights are still checked when they are loaded.
    """
    from ..hub.export import sha256_file

    folder = Path(folder)
    path = folder / HISTORY_NAME
    if not folder.is_dir():
        raise TimmCodedError(f'{folder} is not a training run folder (no such directory)')
    if not path.is_file():
        raise TimmCodedError(f'{folder} holds no {HISTORY_NAME}: not a training run folder')
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TimmCodedError(f'{path} is not a readable run record ({" ".join(str(e).split())})') from None
    if not isinstance(record, dict) or any(k not in record for k in _REQUIRED):
        raise TimmCodedError(f'{path} is not a run record: it needs {", ".join(_REQUIRED)}')
    if not record['history']:
        raise TimmCodedError(f'{path} records no finished epoch')
    checkpoint = folder / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise TimmCodedError(f'{folder} holds no {CHECKPOINT_NAME}')
    expected = record.get('checkpoint_sha256')
    if expected is not None and sha256_file(checkpoint) != expected:
        raise IntegrityError(
            f'{checkpoint} is not the checkpoint {path} was written with (sha256 differs; '
            'a run stopped between writing the two?): refusing it')
    stage_epochs(record)  # the stages must account for the history
    return record


def run_stages(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The arguments of each training stage of a run record (records from before warm restarts
    existed hold one stage, as `args`)."""
    return list(record.get('stages') or [record.get('args') or {}])


def stage_epochs(record: Dict[str, Any]) -> List[int]:
    """Epochs each training stage of a run record ran, in order (one stage unless warm restarts).

    A stage records `epochs_run` as it goes; older records only their planned `epochs`, which are
    taken as run when they add up to the history's length.
    """
    stages = run_stages(record)
    num_epochs = len(record['history'])
    if all('epochs_run' in s for s in stages):
        ran = [int(s['epochs_run']) for s in stages]
    else:
        ran = [int(s.get('epochs', 0)) for s in stages]
        if len(stages) == 1:
            ran = [num_epochs]
    if sum(ran) != num_epochs:
        raise TimmCodedError(
            f'the run record lists {num_epochs} epochs but its stages account for {sum(ran)} ({ran}): '
            'a stage that did not finish its schedule left no record of where it stopped')
    return ran
