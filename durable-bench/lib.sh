# Shared by the bench scripts (sourced, not run).

# wait_addr LOG [PREFIX="listening on"] [TRIES=100]: the address a host printed after
# PREFIX at the start of a line of LOG, looked for every 0.1 s up to TRIES times;
# empty if it never came.
wait_addr() {
  local log=$1 prefix=${2:-listening on} tries=${3:-100} addr=""
  for _ in $(seq "$tries"); do
    addr=$(grep -o "^$prefix [0-9.:]*" "$log" | head -1 | awk '{print $NF}' || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  echo "$addr"
}
