#!/usr/bin/env bash
# Installs warden on a GPU host: the binary, the `warden` user, /etc/warden/warden.toml (only
# if absent), the default alert rules, the runbook and the systemd unit (enabled
# with systemctl; start it with `systemctl start warden` once the config is right).
#
#   scripts/install.sh [--prefix DIR] [--dry-run] [--binary PATH]
#
# --prefix DIR  install into DIR as if it were / (a staging root or a test's temp dir): no
#               user is created, nothing is chowned, systemctl is not called.
# --dry-run     print what would be done, change nothing.
# --binary PATH the warden binary (default: target/release/warden, else target/debug/warden).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=""
dry_run=0
binary=""

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --binary=*) binary="${1#--binary=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [[ -z "$binary" ]]; then
  for candidate in "$repo/target/release/warden" "$repo/target/debug/warden"; do
    if [[ -x "$candidate" ]]; then binary="$candidate"; break; fi
  done
fi
if [[ -z "$binary" || ! -x "$binary" ]]; then
  echo "install.sh: no warden binary (build with 'cargo build --release' or pass --binary)" >&2
  exit 2
fi
# serve-model runs warden-model, the sibling binary that links libtorch (the agent does not).
model_binary="$(dirname "$binary")/warden-model"
if [[ ! -x "$model_binary" ]]; then
  echo "install.sh: no $model_binary next to the warden binary" >&2
  exit 2
fi
if [[ -n "$prefix" ]]; then
  prefix="$(realpath -m "$prefix")"
fi
if [[ -z "$prefix" && $dry_run -eq 0 && $(id -u) -ne 0 ]]; then
  echo "install.sh: installing into / needs root (or use --prefix / --dry-run)" >&2
  exit 2
fi

# Paths as the running host sees them; files land under $prefix.
bin_path=/usr/local/bin/warden
share_dir=/usr/local/share/warden
doc_dir=/usr/local/share/doc/warden
etc_dir=/etc/warden
unit_path=/etc/systemd/system/warden.service
rules_path="$share_dir/alerts/default.toml"

# Runs a command, or prints it under --dry-run.
run() {
  if [[ $dry_run -eq 1 ]]; then
    echo "would run: $*"
  else
    echo "+ $*"
    "$@"
  fi
}

# Host-level actions (users, ownership, systemctl) are only echoed into a prefix.
host() {
  if [[ -n "$prefix" ]]; then
    echo "skipped (--prefix): $*"
  else
    run "$@"
  fi
}

run install -d -m 0755 "$prefix/usr/local/bin" "$prefix$share_dir/alerts" "$prefix$doc_dir" \
  "$prefix/etc/systemd/system"
run install -m 0755 "$binary" "$prefix$bin_path"
run install -m 0755 "$model_binary" "$prefix$(dirname "$bin_path")/warden-model"
run install -m 0644 "$repo/alerts/default.toml" "$prefix$rules_path"
run install -m 0644 "$repo/docs/runbook.md" "$prefix$doc_dir/runbook.md"
run install -m 0644 "$repo/systemd/warden.service" "$prefix$unit_path"

# The service user: no login, home in its state dir; group video for /dev/nvidia* where the
# driver does not make the nodes world-writable, render where that group exists.
if ! getent passwd warden >/dev/null 2>&1 || [[ -n "$prefix" ]]; then
  host useradd --system --user-group --home-dir /var/lib/warden --no-create-home \
    --shell /usr/sbin/nologin warden
fi
for group in video render; do
  if getent group "$group" >/dev/null 2>&1; then
    host usermod -aG "$group" warden
  fi
done

# The config is the operator's: written once from the repo's production example, with the
# rules path pointed at the installed defaults.
run install -d -m 0750 "$prefix$etc_dir"
host chown root:warden "$etc_dir"
if [[ -e "$prefix$etc_dir/warden.toml" ]]; then
  echo "kept existing $prefix$etc_dir/warden.toml"
elif [[ $dry_run -eq 1 ]]; then
  echo "would write $prefix$etc_dir/warden.toml (rules = [\"$rules_path\"])"
else
  echo "+ write $prefix$etc_dir/warden.toml"
  tmp="$(mktemp "$prefix$etc_dir/.warden.toml.XXXXXX")"
  sed "s#^rules = .*#rules = [\"$rules_path\"]#" "$repo/config/warden.toml" >"$tmp"
  chmod 0640 "$tmp"
  mv "$tmp" "$prefix$etc_dir/warden.toml"
fi
host chown root:warden "$etc_dir/warden.toml"

if [[ -z "$prefix" && $dry_run -eq 0 ]]; then
  "$bin_path" check-config "$etc_dir/warden.toml"
fi
host systemctl daemon-reload
host systemctl enable warden.service
if [[ $dry_run -eq 1 ]]; then
  echo "dry run: nothing was changed"
else
  echo "warden installed${prefix:+ into $prefix}; start it with: systemctl start warden"
fi
