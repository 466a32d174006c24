"""`torchrun --nproc_per_node 2 cmrl train` on the CPU (gloo): both processes end with the same parameters and codebook, and only
the first process writes files. Issue 12: training on more than one process from the command line."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest, torch
from cmrl.checkpoint import load_model, read_checkpoint
from cmrl.distributed import state_fingerprint


@pytest.mark.skipif(not torch.distributed.is_available(), reason='torch without distributed support')
def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / 'run'
    # = `torchrun --standalone --nproc_per_node 2 -m cmrl.cli train ...` (torchrun's own parser would take `--d` for one of its options)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'cmrl.cli', 'train', '--data', 'synth',
           '--epochs', '1', '--n-train', '16', '--n-valid', '8', '--bs', '8', '--steps', '5', '--n-layers', '1', '--n-codes', '16',
           '--out', str(out)]
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-4000:]
    # every process checked its model against the others' after training (`distrib_ctx`: gathered SHA-1 of every parameter and buffer)
    m = re.findall(r'cmrl: the (\d+) processes hold the same parameters and codebook \(sha1 ([0-9a-f]{40})\)', p.stdout)
    assert m and m[0][0] == '2', p.stdout[-4000:]
    assert 'ended with different models' not in p.stdout
    # ... and that model is the one rank 0 saved
    model, ck = load_model(out, weights='last')
    assert state_fingerprint(model) == m[0][1]
    assert int(ck['model']['codebook.steps']) > 0
    # only rank 0 wrote: one set of files, no temporary leftovers, one epoch line
    assert sorted(f.name for f in out.iterdir()) == ['checkpoint.pt', 'codebook.png', 'config.json', 'losses.png', 'metrics.json']
    assert len(re.findall(r'^epoch 1/1 ', p.stdout, flags=re.M)) == 1
    assert read_checkpoint(out)['epoch'] == 0
    agree = json.loads((out / 'metrics.json').read_text()).get('ranks_agree')
    if agree is not None: assert agree == {'world': 2, 'same': True, 'fingerprint': m[0][1]}
