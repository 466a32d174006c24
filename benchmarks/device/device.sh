# the device check of issue 13 item 6: the main job (Tux Paint, defaults) on the GPU in fp32 and bf16; scored back home with `cmrl eval`
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1  # the repository root
export PYTHONUNBUFFERED=1 CMRL_TUXPAINT=$PWD/.gpu/stamps CMRL_CACHE=/tmp/cmrl_cache PYTHONWARNINGS=ignore
find .gpu/stamps -type f -exec touch -d @1700000000 {} +  # the carried image features are keyed by path, size and this mtime
mkdir -p $CMRL_CACHE && cp -r .gpu/cache_img/. $CMRL_CACHE/
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc; ls $CMRL_CACHE; } 2>&1 | tee $OUT/log_fp32.txt
for prec in fp32 bf16; do
  python3 benchmarks/device/timed.py train --precision $prec --out /tmp/run_$prec ${EPOCHS:+--epochs $EPOCHS} 2>&1 | grep -v -i warn | tee -a $OUT/log_$prec.txt | tail -12
  mkdir -p $OUT/run_$prec && cp /tmp/run_$prec/checkpoint.pt /tmp/run_$prec/config.json /tmp/run_$prec/metrics.json $OUT/run_$prec/
done
