# Sourced by the scripts in this folder: `step NAME CMD...` runs CMD and prints its wall time.
step() {
  local name=$1 t0
  shift
  echo "== $name"
  t0=$(date +%s)
  "$@"
  echo "== $name: $(( $(date +%s) - t0 )) s"
}
