"""Generation benchmark (issue 14): captions written through the shared codes on the French Tux Paint split.

Trains Uni-Code (image + text + speech, `steps=4`, the opt-in text decoder: `cmrl train --decoders text --steps 4`,
best weights by validation loss) on the training part of the committed split (`benchmarks/splits/tuxpaint_fr.json`),
then writes captions for the test items from the picture, from the speech and from both (greedy decoding and beam
search) and scores them (`cmrl.generate.text_generation_eval`): character error rate (jiwer), BLEU and chrF (sacrebleu),
against three references: the medoid training caption, the caption of the nearest training item by cmrl's own
retrieval, and a shuffled-input control (the decoder fed another test item's codes), with paired-bootstrap intervals.

    python benchmarks/generation.py --work /tmp/gen --epochs 20    # writes benchmarks/generation.json (about 15 min on 2 cores)
"""
import json, time
from pathlib import Path
from cmrl.data.splits import write_manifests, read_split
if __package__: from . import results as R  # python -m benchmarks.generation
else: import results as R  # python benchmarks/generation.py (its folder is on the path)
bench_parser, legacy_stems, SPLIT_FILE, ROOT = R.bench_parser, R.legacy_stems, R.SPLIT_FILE, R.ROOT

def main(argv=None):
    p = bench_parser(__doc__, 'folder for the manifest and the run', 20, 'generation.json')
    p.add_argument('--methods', default='greedy,beam')
    a = p.parse_args(argv)
    import cmrl.train as T
    from cmrl.eval.textgen import text_generation_eval, eval_table
    work = Path(a.work)
    stems, stem_flags = legacy_stems()  # the stems generation.json was measured with
    manifest = write_manifests(read_split(SPLIT_FILE), work)['paths']['cmrl']
    opts = dict(data=str(manifest), modalities=('image', 'text', 'speech'), decoders='text', steps=4, epochs=a.epochs, **stems,
                out=str(work / 'run'), overwrite=True, monitor='valid_loss', seed=a.seed)
    t0 = time.time()
    s = T.train(quiet=True, **opts)
    res = {'command': f"cmrl train --data MANIFEST --modalities image,text,speech --decoders text --steps 4 --epochs {a.epochs} {stem_flags} "
                      f"--monitor valid_loss --seed {a.seed}", 'split_file': str(SPLIT_FILE.relative_to(ROOT)),
           'train': {k: s.get(k) for k in ('fit_seconds', 'train_loss', 'valid_loss', 'best', 'n_train', 'n_valid')}, 'eval': {}}
    for m in a.methods.split(','):
        ev = text_generation_eval(work / 'run', split='test', method=m, device='cpu', weights='best')
        res['eval'][m] = ev
        print(eval_table(ev), flush=True)
    res['total_seconds'] = round(time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print('wrote', a.out)

if __name__ == '__main__': main()
