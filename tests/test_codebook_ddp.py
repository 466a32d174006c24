"""`SharedCodebook` under torch.distributed: 2 CPU processes (gloo) must hold identical codebooks, equal to one process
that sees the concatenated batch (initialisation, EMA statistics and dead-code resets are all synchronised)."""
import os, socket
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD, STEPS, B = 2, 6, 24  # B items per process per step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _batches(multi: bool):
    "The global batches, one per step: a single modality (with padding) or two paired modalities"
    g = torch.Generator().manual_seed(0)
    first, later = torch.randn(6, 8, generator=g) * 4, torch.randn(6, 8, generator=g) * 4
    out = []
    for s in range(STEPS):
        centres = first if s < STEPS // 2 else later  # the data moves: codes left behind die and are re-seeded
        lab = torch.randint(6, (WORLD * B, 5), generator=g)
        z = centres[lab] + 0.3 * torch.randn(WORLD * B, 5, 8, generator=g)
        mask = torch.rand(WORLD * B, 5, generator=g) > 0.2
        if not multi: out.append(({'audio': z}, {'audio': mask}, None))
        else:
            v = centres[lab] + 0.3 * torch.randn(WORLD * B, 5, 8, generator=g)
            present = torch.rand(WORLD * B, generator=g) > 0.25
            out.append(({'audio': z, 'video': v}, {'audio': mask}, {'video': present}))
    return out


def _make(multi: bool):
    from cmrl.codebook import SharedCodebook
    # single modality: k-means initialisation and frequent dead-code resets (16 codes, 6 clusters, S = 2)
    kw = dict(n_codes=16, dim=8, init='kmeans', dead_after=2, decay=0.9, seed=3)
    if multi: kw.update(mm_ema='reference', cross_commit='reference')
    return SharedCodebook(**kw).train()


def _shard(d, r):
    return None if d is None else {k: v[r * B:(r + 1) * B] for k, v in d.items()}


def _run(rank: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        for multi in (False, True):
            cb = _make(multi)
            for z, mask, present in _batches(multi): cb(_shard(z, rank), _shard(mask, rank), _shard(present, rank))
            torch.save(cb.state_dict(), os.path.join(out_dir, f'multi{int(multi)}-rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def ddp_states(tmp_path_factory):
    "Both scenarios run once in 2 spawned processes (spawning and importing dominate the time)"
    d = tmp_path_factory.mktemp('ddp')
    mp.spawn(_run, args=(_free_port(), str(d)), nprocs=WORLD, join=True)
    return {multi: [torch.load(d / f'multi{int(multi)}-rank{r}.pt') for r in range(WORLD)] for multi in (False, True)}


@pytest.mark.parametrize('multi', [False, True], ids=['one-modality+resets', 'two-modalities+mm-ema'])
def test_ddp_ranks_agree_with_one_process(ddp_states, multi):
    states = ddp_states[multi]
    for k in states[0]: assert torch.equal(states[0][k], states[1][k]), f"ranks differ in {k}"
    torch.set_num_threads(1)
    ref = _make(multi)
    resets, reset = [], ref._reset
    ref._reset = lambda *a: resets.append(reset(*a))
    for z, mask, present in _batches(multi): ref(z, mask, present)
    for k, v in ref.state_dict().items():
        assert torch.allclose(states[0][k].float(), v.float(), atol=1e-5, rtol=1e-5), f"DDP and one process differ in {k}"
    assert bool(states[0]['initted']) and int(states[0]['steps']) == STEPS
    if not multi: assert sum(resets) > 0  # the run did re-seed dead codes
