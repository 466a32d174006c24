"""How much does each modality say about the category of items it never saw? A supervised ceiling beside `results.py`.

The probe goals of `results.py` ask a label-free model's *speech* features to tell the category of a new stamp
(image->speech: a probe fit on pictures, scored on speech; speech->image: fit on speech). Whatever the alignment, such
a probe cannot know more about a recording's category than the recording's features do. This script measures what a
speech encoder learns about the category **when it is trained on the category labels themselves** (supervised,
labels used on purpose: a diagnostic, not a row of the results table), on the same committed split and scored with
the same `probe_scores` (accuracy, balanced accuracy, majority rate):

* `speech: cmrl encoder` - cmrl's speech branch (`make_encoder('speech')`: `cmrl train`'s log-mel stem with per-item
  cepstral mean normalisation, 2-layer Transformer, pooled to one step) and a linear head, cross-entropy, SpecAugment, AdamW,
  one-cycle schedule, through a fastai `Learner`;
* `speech: conv1d` - a 1-D convolution stack over time with batch norm and mean pooling (the shape small-data speech
  classifiers usually take), same training;
* `image: frozen EfficientNet-Lite0 + linear probe` - the image front-end's features, C chosen by cross-validation
  on the training items (`results.py`'s probe).

Each speech row reports the last epoch and, as an optimistic bound, the best epoch chosen on the scored part itself.

Usage (from the repository root, with the project's venv):

    python benchmarks/ceiling.py --split test --seeds 0,1      # writes benchmarks/ceiling.json
    python benchmarks/ceiling.py --split valid --seeds 0 --epochs 5 --out /tmp/c.json   # a quick look
"""
from __future__ import annotations
import argparse, json, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
from torch.utils.data import TensorDataset

if __package__: from . import results as R  # python -m benchmarks.ceiling
else: import results as R  # python benchmarks/ceiling.py (its folder is on the path): the committed split
from cmrl.data.splits import read_split, write_manifests
from cmrl.eval.benchmark import fit_probe

ROOT = Path(__file__).resolve().parent.parent


def parts(manifest: Path, part: str) -> dict:
    "Speech log-mels, image features and category labels of the training part and of `part`"
    from cmrl.data.loaders import get_source
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        src = get_source(str(manifest), modalities=('image', 'speech'), image_frontend='efficientnet_lite0')
        out = {}
        for p in ('train', part):
            ds = src.dataset(p)
            items = [ds[i] for i in range(len(ds))]
            out[p] = {'speech': [it['speech'] for it in items], 'image': torch.cat([it['image'] for it in items]),
                      'label': [it['extra']['category'] for it in items]}
    return out


def pad(seqs, max_len: int = 300):
    "`[N, L, F]` zero-padded frames and their `[N, L]` mask"
    L = min(max_len, max(len(s) for s in seqs))
    x, m = torch.zeros(len(seqs), L, seqs[0].shape[-1]), torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        n = min(L, len(s)); x[i, :n], m[i, :n] = s[:n], True
    return x, m


class CmrlSpeech(nn.Module):
    "cmrl's speech branch (with `cmrl train`'s log-mel stem) pooled to one step, then a linear head"
    def __init__(self, n_classes: int, d: int = 64, dropout: float = 0.1):
        super().__init__()
        from cmrl.encoders import make_encoder
        from cmrl.train import TrainConfig
        self.enc = make_encoder('speech', d=d, steps=1, n_layers=2, spec_layers=None, n_heads=4, n_mels=64, dropout=dropout,
                                audio_width=TrainConfig.audio_width or None)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(d, n_classes))
    def forward(self, x, m): return self.head(self.enc(x, m).sem[:, 0])


class Conv1dSpeech(nn.Module):
    "Convolutions over time (mel bins as channels) with batch norm, masked mean pooling, a linear head"
    def __init__(self, n_classes: int, n_mels: int = 64):
        super().__init__()
        blk = lambda i, o, k, s: nn.Sequential(nn.Conv1d(i, o, k, s, k // 2, bias=False), nn.BatchNorm1d(o), nn.ReLU())
        self.convs = nn.ModuleList([blk(n_mels, 128, 5, 2), blk(128, 128, 5, 2), blk(128, 256, 5, 2), blk(256, 256, 3, 1)])
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(256, n_classes))
    def forward(self, x, m):
        from cmrl.encoders import standardise_frames
        h = standardise_frames(x, m)[1].transpose(1, 2)  # per-item cepstral mean normalised frames
        for c in self.convs: h = c(h); m = m[:, ::c[0].stride[0]]
        w = m[:, None].to(h.dtype)
        return self.head((h * w).sum(-1) / w.sum(-1).clamp(min=1))


def train_speech(arch: str, tr: dict, te: dict, classes: list, seed: int, epochs: int, bs: int = 32, lr: float = 2e-3) -> dict:
    "Fit a supervised speech classifier through fastai; probe scores of its last and best epoch on the scored part"
    from fastai.callback.core import Callback
    from fastai.optimizer import Adam  # decoupled weight decay (AdamW)
    from cmrl.augment import spec_augment
    from cmrl.eval.generalization import probe_scores
    from cmrl.fit import fit_tensors
    (xtr, mtr), (xte, mte) = pad(tr['speech']), pad(te['speech'])
    ytr = torch.tensor([classes.index(c) for c in tr['label']]); yte = np.array([classes.index(c) for c in te['label']])
    net = lambda: CmrlSpeech(len(classes)) if arch == 'cmrl' else Conv1dSpeech(len(classes))
    scores = []

    class SpecAug(Callback):
        order = 5
        def before_batch(self):
            if self.training:
                x, m = self.learn.xb
                self.learn.xb = (spec_augment(x, m), m)

    class Score(Callback):
        order = 60
        def after_epoch(self):
            self.learn.model.eval()
            with torch.no_grad(): p = self.learn.model(xte, mte).argmax(1).numpy()
            scores.append(probe_scores(yte, p, ytr.numpy()))

    t = time.time()
    train, scored = TensorDataset(xtr, mtr, ytr), TensorDataset(xte, mte, torch.as_tensor(yte))
    learn = fit_tensors(net, train, scored, F.cross_entropy, epochs, lr, bs, valid_bs=bs, wd=0.1, opt_func=Adam,
                        seed=seed, device='cpu', threads=None, cbs=[SpecAug(), Score()])
    best = max(range(len(scores)), key=lambda i: scores[i]['bacc'])
    pct = lambda s: {'acc': 100 * s['acc'], 'bacc': 100 * s['bacc'], 'majority': 100 * s['majority'], 'chance': 100 * s['chance']}
    return {'last': pct(scores[-1]), 'best_epoch': best + 1, 'best': pct(scores[best]), 'train_seconds': round(time.time() - t, 1),
            'n_params': sum(p.numel() for p in learn.model.parameters())}


def image_probe(tr: dict, te: dict, classes: list, seed: int) -> dict:
    "The results benchmark's probe (`fit_probe`: C by cross-validation on the training items) on the image features"
    from cmrl.eval.generalization import probe_scores
    ytr = np.array([classes.index(c) for c in tr['label']]); yte = np.array([classes.index(c) for c in te['label']])
    head, C = fit_probe(tr['image'].numpy(), ytr, seed)
    s = probe_scores(yte, head.predict(te['image'].numpy().astype(np.float64)), ytr)
    return {'acc': 100 * s['acc'], 'bacc': 100 * s['bacc'], 'majority': 100 * s['majority'], 'chance': 100 * s['chance'], 'C': C}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--split', default='test', choices=('valid', 'test'))
    p.add_argument('--seeds', default='0,1')
    p.add_argument('--epochs', type=int, default=60)
    p.add_argument('--split-file', default=str(R.SPLIT_FILE))
    p.add_argument('--work', default=None, help='folder for the manifest (default: a temporary folder)')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'ceiling.json'))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    split = read_split(Path(a.split_file))
    work = Path(a.work or tempfile.mkdtemp(prefix='cmrl-ceiling-'))
    man = write_manifests(split, work)['paths']['cmrl']
    d = parts(man, a.split)
    tr, te = d['train'], d[a.split]
    classes = sorted(set(tr['label']) | set(te['label']))
    seeds = [int(s) for s in a.seeds.split(',')]
    rows = {'image: frozen EfficientNet-Lite0 + linear probe': {str(s): image_probe(tr, te, classes, s) for s in seeds}}
    for arch, name in (('cmrl', 'speech: cmrl encoder'), ('conv1d', 'speech: conv1d')):
        rows[name] = {}
        for s in seeds:
            rows[name][str(s)] = r = train_speech(arch, tr, te, classes, s, a.epochs)
            print(f"{name} seed {s}: last acc {r['last']['acc']:.1f} bacc {r['last']['bacc']:.1f}; "
                  f"best (epoch {r['best_epoch']}) acc {r['best']['acc']:.1f} bacc {r['best']['bacc']:.1f}; {r['train_seconds']} s", flush=True)
    res = {'what': 'supervised category classifiers (labels used on purpose: a diagnostic ceiling, not a results row)',
           'split_file': str(Path(a.split_file).relative_to(ROOT)) if Path(a.split_file).is_relative_to(ROOT) else a.split_file,
           'scored_part': a.split, 'counts': {k: len(v['label']) for k, v in d.items()}, 'epochs': a.epochs, 'seeds': seeds,
           'command': 'python benchmarks/ceiling.py ' + ' '.join(argv if argv is not None else sys.argv[1:]), 'rows': rows}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")
    return res


if __name__ == '__main__':
    main()
