"Two CPU processes (gloo) train a tiny Uni-Code through fastai's distributed support: identical parameters and codebook on both ranks."
import os, socket, subprocess, sys, textwrap
from pathlib import Path
import pytest, torch

WORKER = textwrap.dedent('''
    import os, sys, warnings, torch
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    from cmrl.core import set_seed, modality_dls
    from cmrl.data.synth import SynthEvents
    from cmrl.encoders import input_dims
    from cmrl.models.unicode import unicode_model
    from cmrl.learner import cmrl_learner
    from cmrl.distributed import distrib_ctx
    out = sys.argv[1]
    set_seed(0)
    trn, val = SynthEvents(32, seed=0), SynthEvents(16, seed=1)
    dls = modality_dls([trn[i] for i in range(32)], [val[i] for i in range(16)], bs=8, device='cpu')
    xb, = dls.one_batch()
    set_seed(0)
    model = unicode_model(xb.modalities, input_dims(xb, vocab=len(trn.vocab)), d=16, steps=5, n_layers=1, n_codes=16, dead_after=3)
    learn = cmrl_learner(dls, model, lr=3e-3, mi_steps=2)
    with distrib_ctx(learn):
        with learn.no_logging(): learn.fit(2, 3e-3)
    rank = torch.distributed.get_rank()
    torch.save({'model': model.state_dict(), 'hist': learn.codebook_history, 'loss': learn.loss_history,
                'world': torch.distributed.get_world_size()}, f'{out}/rank{rank}.pt')
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
''')

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_ddp_two_cpu_processes(tmp_path: Path):
    script = tmp_path / 'worker.py'; script.write_text(WORKER)
    port = _free_port()
    procs = []
    for r in range(2):
        env = {**os.environ, 'RANK': str(r), 'LOCAL_RANK': str(r), 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1',
               'MASTER_PORT': str(port), 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1'}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    for p, o in zip(procs, outs): assert p.returncode == 0, o[-3000:]
    a, b = (torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in range(2))
    assert a['world'] == 2
    sa, sb = a['model'], b['model']
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f'{k} differs between ranks'
    assert int(sa['codebook.steps']) > 0  # the codebook was updated...
    assert not torch.equal(sa['codebook.embed'], unicode_embed_init(sa))  # ...and moved
    assert a['hist'] == b['hist'] and len(a['hist']) == 2  # synchronised codebook statistics
    assert a['loss'] == b['loss']  # synchronised loss breakdown

def unicode_embed_init(sd):
    from cmrl.codebook import SharedCodebook
    return SharedCodebook(sd['codebook.embed'].shape[0], sd['codebook.embed'].shape[1]).embed
