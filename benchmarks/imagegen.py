"""Image-generation benchmark (issue 14): pictures written through the shared codes on the French Tux Paint split.

Trains Uni-Code with OPT's two-stage image decoder (`cmrl train --decoders image --image-frontend pixels --steps 4 --audio-width 0 --text-ngram 0`,
32-pixel pictures, best weights by validation loss) on the training part of the committed split, then generates one
picture per test item from its caption and one from its spoken description (`cmrl.generate.generate`, top-k samples),
and scores them with an independent classifier (`cmrl.eval.imagegen.fit_image_classifier`: a small CNN trained on the
real training pictures, not cmrl's encoder): its accuracy on the real test pictures, on the generated pictures, on the
generated pictures against another test item's category (the shuffled control), chance and the majority class.

    python benchmarks/imagegen.py --work /tmp/imagegen --epochs 15    # writes benchmarks/imagegen.json
"""
import json, time
from pathlib import Path
from cmrl.data.splits import write_manifests, read_split
if __package__: from . import results as R  # python -m benchmarks.imagegen
else: import results as R  # python benchmarks/imagegen.py (its folder is on the path)
bench_parser, legacy_stems, SPLIT_FILE, ROOT = R.bench_parser, R.legacy_stems, R.SPLIT_FILE, R.ROOT

def main(argv=None):
    p = bench_parser(__doc__, 'folder for the manifest, the run and the pictures', 15, 'imagegen.json')
    p.add_argument('--clf-epochs', type=int, default=40)
    p.add_argument('--reuse', action='store_true', help='score the run already in --work instead of training again')
    a = p.parse_args(argv)
    import numpy as np, torch
    from PIL import Image
    import cmrl.train as T
    from cmrl.generate import generate
    from cmrl.eval.textgen import derangement
    from cmrl.eval.imagegen import manifest_pictures, fit_image_classifier, imagegen_report
    work = Path(a.work)
    stems, stem_flags = legacy_stems()  # the stems imagegen.json was measured with
    m = write_manifests(read_split(SPLIT_FILE), work)
    manifest, rows = m['paths']['cmrl'], m['rows']
    t0 = time.time()
    done = work / 'run' / 'metrics.json'
    s = json.loads(done.read_text()) if a.reuse and done.exists() else T.train(quiet=True, data=str(manifest), modalities=('image', 'text', 'speech'), decoders='image', image_frontend='pixels',
                image_size=32, steps=4, epochs=a.epochs, **stems, out=str(work / 'run'), overwrite=True, monitor='valid_loss', seed=a.seed)
    test = [r for r in rows if r['split'] == 'test']
    gen = {}
    for src, key in (('text', 'text'), ('speech', 'speech')):
        pics = []
        for i, r in enumerate(test):
            g = generate(work / 'run', r[key], to='image', k=1, out=str(work / 'pictures' / src / str(i)), seed=a.seed)
            pics.append(torch.from_numpy(np.array(Image.open(g['results'][0]['file']).convert('RGB').resize((32, 32)))).permute(2, 0, 1))
        gen[src] = torch.stack(pics)
    tr, te = manifest_pictures(manifest, 'train', 32), manifest_pictures(manifest, 'test', 32)
    clf, _ = fit_image_classifier(tr['images'], tr['labels'], epochs=a.clf_epochs, seed=a.seed)
    labels = [r['label'] for r in test]
    perm = derangement(len(labels), a.seed).tolist()  # the shuffled control: every item gets another test item's category
    res = {'command': f"cmrl train --data MANIFEST --modalities image,text,speech --decoders image --image-frontend pixels --image-size 32 "
                      f"--steps 4 --epochs {a.epochs} {stem_flags} --monitor valid_loss --seed {a.seed}",
           'split_file': str(SPLIT_FILE.relative_to(ROOT)), 'train': {k: s.get(k) for k in ('fit_seconds', 'best', 'n_train', 'n_valid')},
           'classifier_epochs': a.clf_epochs, 'from': {}}
    for src, g in gen.items():
        r = imagegen_report(clf, tr['labels'], te['images'], te['labels'], g, labels)
        r['shuffled_accuracy'] = clf.accuracy(g, [labels[j] for j in perm])
        res['from'][src] = r
    res['total_seconds'] = round(time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res, indent=1, default=float))

if __name__ == '__main__': main()
