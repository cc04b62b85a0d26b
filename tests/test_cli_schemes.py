"""`timm-coded schemes generate|show|list`, through cli.main and once as a real process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_coded.cli import main
from timm_coded.codes import CIFAR10_CLASSES, builtin_scheme, generate_scheme, list_builtin_schemes, load_scheme

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err, *fragments):
    assert code == 2
    assert 'Traceback' not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('timm-coded schemes: error: ')
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_writes_the_table_and_reports_metrics(tmp_path, capsys):
    out_file = tmp_path / 'r5.json'
    code, out, err = run(capsys, 'schemes', 'generate', '--classes', '10', '--subnns', '10', '--active', '5',
                         '--min-distance', '4', '--seed', '2', '--out', str(out_file))
    assert code == 0
    assert 'H_min=4 S_min=5 S_max=5 (K=10 N=10 N_act=5) in ' in out and f'wrote {out_file}' in out
    saved = load_scheme(out_file)
    assert saved == generate_scheme(10, 10, 5, min_distance=4, seed=2)  # same call, same table
    assert saved.source.startswith('timm_coded.codes.generate_scheme(10, 10, 5, min_distance=4, seed=2)')
    assert json.loads(out_file.read_text())['format'] == 'timm-coded-scheme/1'
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]  # hidden ones too


def test_generate_without_out_prints_json_and_metrics_on_stderr(capsys):
    code, out, err = run(capsys, 'schemes', 'generate', '--classes', '10', '--subnns', '10', '--active', '3')
    assert code == 0
    assert err.startswith('H_min=4 S_min=3 S_max=3')
    data = json.loads(out)
    assert len(data['codewords']) == 10 and all(c.count('1') == 3 for c in data['codewords'])


def test_generate_with_class_names_and_name(tmp_path, capsys):
    names = tmp_path / 'names.txt'
    names.write_text('\n'.join(CIFAR10_CLASSES) + '\n')
    out_file = tmp_path / 's.json'
    code, out, err = run(capsys, 'schemes', 'generate', '--classes', '10', '--subnns', '10', '--active', '3',
                         '--class-names', str(names), '--name', 'cifar_r3', '--out', str(out_file))
    assert code == 0
    saved = load_scheme(out_file)
    assert saved.class_names == CIFAR10_CLASSES and saved.name == 'cifar_r3'
    code, out, err = run(capsys, 'schemes', 'show', str(out_file))
    assert code == 0
    assert out.startswith('cifar_r3: K=10 N=10 N_act=3 H_min=4 S_min=3 S_max=3')
    assert 'truck' in out


def test_show_builtin_prints_metrics_and_named_codewords(capsys):
    code, out, err = run(capsys, 'schemes', 'show', 'k10_n10_a5')
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == 'k10_n10_a5: K=10 N=10 N_act=5 H_min=4 S_min=5 S_max=5'
    assert lines[1] == 'source: Avranas & Kountouris 2022, Table 3 (CIFAR-10)'
    assert 'class pairs by distance: 4:20 6:15 8:10' in out
    assert 'column sums: 5 5 5 5 5 5 5 5 5 5' in out
    airplane = next(line for line in lines if 'airplane' in line)
    assert airplane.split() == ['0', 'airplane', '1010100011', '0', '2', '4', '8', '9']


def test_list_shows_every_builtin_with_metrics(capsys):
    code, out, err = run(capsys, 'schemes', 'list')
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == set(list_builtin_schemes())
    for name, row in rows.items():
        scheme = builtin_scheme(name)
        s_min, s_max = scheme.column_sum_range
        assert row[1:7] == [str(v) for v in (scheme.num_classes, scheme.num_subnns, scheme.num_active,
                                             scheme.min_distance, s_min, s_max)]
    assert rows['k1000_n32_a16'][4:7] == ['12', '500', '500']


@pytest.mark.parametrize('argv, fragments', [
    (['show', 'k3_n3_a1'], ["'k3_n3_a1' is neither a built-in scheme"]),
    (['generate', '--classes', '10', '--subnns', '10', '--active', '5', '--min-distance', '6'],
     ['min_distance=6 is impossible for 10 classes', 'H_min <= 4']),
    (['generate', '--classes', '300', '--subnns', '10', '--active', '5'], ['C(10,5) = 252']),
    (['generate', '--classes', '10', '--subnns', '10', '--active', '5', '--time-budget', '-1'],
     ['time_budget must be a positive']),
])
def test_user_mistakes_are_one_line_errors(capsys, argv, fragments):
    assert_one_line_error(*run(capsys, 'schemes', *argv), *fragments)


def test_file_mistakes_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"codewords": ["110", "111"]}')
    assert_one_line_error(*run(capsys, 'schemes', 'show', str(bad)), 'row 0 has 2, row 1 has 3')
    names = tmp_path / 'names.txt'
    names.write_text('a\nb\n')
    assert_one_line_error(*run(capsys, 'schemes', 'generate', '--classes', '10', '--subnns', '10', '--active', '3',
                               '--class-names', str(names)), '2 class names for 10 codewords')
    assert_one_line_error(*run(capsys, 'schemes', 'generate', '--classes', '10', '--subnns', '10', '--active', '3',
                               '--out', str(tmp_path / 'no' / 'such' / 'dir.json')), 'No such file or directory')


def test_missing_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(['schemes', 'generate', '--classes', '10'])
    assert info.value.code == 2
    assert 'required' in capsys.readouterr().err


def test_real_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    out_file = tmp_path / 'r3.json'
    done = subprocess.run([sys.executable, '-m', 'timm_coded.cli', 'schemes', 'generate', '--classes', '10',
                           '--subnns', '10', '--active', '3', '--out', str(out_file)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'H_min=4 S_min=3 S_max=3' in done.stdout
    assert load_scheme(out_file) == generate_scheme(10, 10, 3)
    assert 'Traceback' not in done.stderr
