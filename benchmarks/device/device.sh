# the device check of issue 13 item 6: the main job (Tux Paint, defaults) on the GPU in fp32 and bf16; scored back home with `cmrl eval`
# carries `.gpu/` (made by `prepare.py`): call with carry [".gpu"]; EPOCHS=N shortens the runs
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1  # the repository root
R=$(cat .gpu/root.txt)  # the carried cache keys name files under this path: work there
if [ "$PWD" != "$R" ]; then mkdir -p "$R" && cp -r . "$R"/ && cd "$R" || exit 1; fi
export PYTHONUNBUFFERED=1 CMRL_TUXPAINT=$R/.gpu/stamps CMRL_CACHE=/tmp/cmrl_cache
export PYTHONPATH="$R:$R/.gpu/bin${PYTHONPATH:+:$PYTHONPATH}"  # this cmrl; the carried word vectors
find .gpu/stamps -type f -exec touch -d @1700000000 {} +  # the carried features and hashes are keyed by path, size and this mtime
rm -rf $CMRL_CACHE && mkdir -p $CMRL_CACHE && cp -r .gpu/cache/. $CMRL_CACHE/
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc; echo "repo $PWD"; } 2>&1 | tee $OUT/log_fp32.txt
for prec in fp32 bf16; do
  python3 benchmarks/device/timed.py train --precision $prec --out /tmp/run_$prec ${EPOCHS:+--epochs $EPOCHS} 2>&1 | grep -v -i 'futurewarning\|warnings.warn' | tee -a $OUT/log_$prec.txt | tail -8
  # a checkpoint is about 17 MB and a file back is at most 16 MiB, 8 files in all: one tar per run, in 15 MB parts
  tar -C /tmp -cf - run_$prec/checkpoint.pt run_$prec/config.json run_$prec/metrics.json | split -b 15M - $OUT/run_$prec.tar.part-
done
