#!/usr/bin/env bash
# The wheel as a user gets it: build it (`pip wheel`, the CMake build of the native libraries included), install it
# into a fresh virtualenv outside the checkout, and from a folder outside the checkout run `dynet-deploy doctor`,
# export -> fuse -> run -> validate of the bundled Dy-ResNet18 checkpoint, `deploy --triton --copy-op-library` of the
# bundled recipe, and its Triton repository loaded as another user the way Triton's onnxruntime backend does.
# Every Python process of those steps checks at exit that no module and no loaded dynet library came from the
# checkout, and that the libraries it loaded are the wheel's (dynet_deploy/lib/ in the virtualenv); it fails if not.
#
#   scripts/wheel_check.sh            (CI runs it after `make test`)
# Environment: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0, installed first as the Makefile does),
# KEEP=1 keeps the scratch folder, CMAKE_BUILD_PARALLEL_LEVEL (default 2). The native libraries are built from scratch,
# as `pip install .` does.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
WORK=$(cd "$(mktemp -d)" && pwd -P)
case "$WORK/" in "$ROOT"/*) echo "wheel_check: the scratch folder $WORK is inside the checkout" >&2; exit 1 ;; esac
if [ "${KEEP:-0}" = 1 ]; then echo "scratch folder: $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
VENV=$WORK/venv
start=$(date +%s)
step() { printf '\n== %s (%ds)\n' "$*" $(($(date +%s) - start)); }
# Commands are echoed with the scratch folder as $WORK, so the transcript reads the same on every run.
show() { printf '$ %s\n' "$*" | sed "s|$WORK|\$WORK|g; s|$ROOT|\$ROOT|g"; "$@"; }

step "fresh virtualenv outside the checkout"
show "$PYTHON" -m venv "$VENV"
show "$VENV/bin/python" -m pip install -q --upgrade pip
show "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"

step "build the wheel"
show "$VENV/bin/python" -m pip wheel -q --no-deps -w "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/dynet_deploy-*.whl)
"$VENV/bin/python" - "$WHEEL" <<'EOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
libs = sorted(n for n in names if n.startswith("dynet_deploy/lib/"))
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files; native libraries: {', '.join(libs)}")
need = ["dynet_deploy/lib/libdynet_dynamic_conv_cpu.so", "dynet_deploy/lib/libdynet_dynamic_conv_ort.so",
        "dynet_deploy/include/dynetDynamicConv.h", "dynet_deploy/assets/dy_resnet18_fmnist.safetensors",
        "dynet_deploy/assets/dy_resnet18_fmnist.json"]
missing = [n for n in need if n not in names]
if missing:
    sys.exit(f"wheel_check: the wheel lacks {missing}")
EOF

step "install the wheel"
extra=""
"$VENV/bin/python" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('dynet_deploy/lib/')])" "$WHEEL" "$WORK/wheel-libs"
for lib in "$WORK"/wheel-libs/dynet_deploy/lib/*.so; do
  dyn=$(readelf -d "$lib")
  runpath=$(printf '%s\n' "$dyn" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
  printf '%s: NEEDED %s; RUNPATH %s\n' "$(basename "$lib")" \
    "$(printf '%s\n' "$dyn" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd' ')" "${runpath:-none}"
  if printf '%s\n' "$dyn" | grep -q '(RPATH)'; then echo "wheel_check: $lib has an RPATH" >&2; exit 1; fi
  for dir in ${runpath//:/ }; do
    case "$dir" in
      '$ORIGIN' | '$ORIGIN/'*) ;;
      *) echo "wheel_check: $lib has a non-relative RUNPATH entry $dir" >&2; exit 1 ;;
    esac
  done
  # A library linked against cuDNN needs the cudnn extra (nvidia-cudnn-cu13, found through its relative RUNPATH).
  if printf '%s\n' "$dyn" | grep -q 'NEEDED.*libcudnn'; then extra="[cudnn]"; fi
done
show "$VENV/bin/python" -m pip install -q "$WHEEL$extra"

# The guard: every Python process of the steps below imports it (sitecustomize on PYTHONPATH) and checks at exit.
mkdir -p "$WORK/guard" "$WORK/run"
cat > "$WORK/guard/sitecustomize.py" <<EOF
import atexit, os, sys

ROOT, VENV, LOG = "$ROOT/", "$VENV/", "$WORK/loaded.txt"


def _check():
    bad = sorted({f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None) or "")
                  and os.path.realpath(f).startswith(ROOT)})
    maps = open("/proc/self/maps").read().split("\n")
    libs = sorted({line.split()[-1] for line in maps if "libdynet_dynamic_conv" in line})
    bad += [p for p in libs if os.path.realpath(p).startswith(ROOT) or not os.path.realpath(p).startswith(VENV)]
    pkg = sys.modules.get("dynet_deploy")
    with open(LOG, "a") as f:
        if pkg is not None:
            f.write(f"{' '.join(sys.argv[:2])}: dynet_deploy from {os.path.dirname(pkg.__file__)}\n")
        for p in libs:
            f.write(f"{' '.join(sys.argv[:2])}: loaded {p}\n")
    if bad:
        sys.stderr.write("wheel_check: taken from the checkout or outside the virtualenv: " + ", ".join(bad) + "\n")
        sys.stderr.flush()
        os._exit(3)


atexit.register(_check)
EOF
cd "$WORK/run"
export PYTHONPATH="$WORK/guard"
unset DYNET_DEPLOY_PLUGIN_DIR
PATH="$VENV/bin:$PATH"

step "doctor; the native libraries load (the CUDA one where built: no GPU is needed to load it)"
show dynet-deploy doctor
show python -c "from dynet_deploy.op import native; native.load_cpu_library(); \
native.cuda_library_path() and native.load_cuda_library(); print('native libraries load')"

step "export -> fuse -> run -> validate (bundled Dy-ResNet18 checkpoint)"
PKG=$(python -c "import dynet_deploy, pathlib; print(pathlib.Path(dynet_deploy.__file__).parent)")
CKPT=$PKG/assets/dy_resnet18_fmnist.safetensors
echo "checkpoint: $CKPT" | sed "s|$WORK|\$WORK|g"
show dynet-deploy export "$CKPT" -o model.onnx
show dynet-deploy fuse model.onnx -o model.plugin.onnx -q
show python -c "import numpy as np; np.save('x.npy', np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))"
show dynet-deploy run model.plugin.onnx --inputs x.npy --save-outputs y.npz --repeats 3
mkdir validate
show dynet-deploy validate "$CKPT" model.plugin.onnx --batch-sizes 1 3 --out-dir validate

step "deploy (the bundled recipe) with a Triton repository that carries its op library"
RECIPE=$PKG/recipes/dy_resnet18_fmnist.json
[ -f "$RECIPE" ] || { echo "wheel_check: the wheel has no bundled recipe ($RECIPE)" >&2; exit 1; }
show dynet-deploy deploy "$RECIPE" -o deploy --limit 1000 --triton --copy-op-library
ls -l deploy/triton/*/ deploy/triton/*/1 | sed "s|$WORK|\$WORK|g"

step "Triton: the repository loaded as another user, the way Triton's onnxruntime backend does"
# tritonclient only for its model_config protobuf (the backend's config parser); the loader is the test suite's,
# copied out so that nothing is imported from the checkout.
show "$VENV/bin/python" -m pip install -q tritonclient
chmod 755 "$WORK" "$WORK/run"
cp "$ROOT/tests/triton_serving.py" "$WORK/run/triton_serving.py"
show python - "$RECIPE" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, ".")
from triton_serving import other_user_command, serve_as_written  # noqa: E402

from dynet_deploy.checkpoint import load_checkpoint  # noqa: E402
from dynet_deploy.recipe import load_recipe  # noqa: E402

prefix, why = other_user_command()
if prefix is None:
    print(f"skipped: {why}")
    sys.exit(0)
recipe = load_recipe(Path(sys.argv[1]))
folder = Path("deploy/triton") / f"{recipe.name}_onnxruntime"
print((folder / "config.pbtxt").read_text())
x = np.random.default_rng(0).standard_normal((recipe.profile.max, 1, 28, 28), dtype=np.float32)
y = serve_as_written(folder.resolve(), x)
with torch.no_grad():
    ref = load_checkpoint(recipe.checkpoint_path())(torch.from_numpy(x)).numpy()
err = float(np.abs(y - ref).max())
print(f"served as {' '.join(prefix)}: output {list(y.shape)}, max-abs vs PyTorch {err:.2e}")
sys.exit(0 if y.shape == ref.shape and err <= 1e-4 else 1)
PYEOF

step "what the processes imported and loaded"
sort -u "$WORK/loaded.txt" | sed "s|$WORK|\$WORK|g"
if grep -q "$ROOT" "$WORK/loaded.txt"; then echo "wheel_check: something came from the checkout" >&2; exit 1; fi
grep -q "loaded $PKG/lib/libdynet_dynamic_conv_ort.so" "$WORK/loaded.txt" ||
  { echo "wheel_check: no step loaded the wheel's onnxruntime op library" >&2; exit 1; }
step "wheel check passed"
